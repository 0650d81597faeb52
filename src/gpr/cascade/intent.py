"""Session intent, learnt from organic views alone: an estimate of <ad, session intent>.

Clicks are scarce (a few thousand on the small world) but organic views are plentiful, and both
follow the user's current intent. So before the ranker, a small model learns to predict the next
organic view of a session from what came before it:

    score(item | context) = <content(item), f(context) + user(u)> + b(item)
    context = [mean content of the session's earlier views, mean content of the long profile,
               subtopic shares of both, has-session flag, log(1 + session views)]

with f a one-hidden-layer MLP, user(u) a per-user vector (views are plentiful per user, clicks
are not) and b a per-item popularity bias, trained by sampled softmax (the batch's own targets
plus `intent_negatives` uniform organic items as negatives). Ads share the content space, so the
ranker's extra feature is <content(ad), f(context) + user(u)>, a session affinity that never saw
a click. `cascade.intent` switches it on; it is off by default because on the small world it did
not raise the ranking AUC (docs/results/ranking_gap.md).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpr.cascade.config import CascadeConfig
from gpr.cascade.features import Catalog, Requests, request_features, session_mean, session_views
from gpr.market.journeys import SPLIT_CODE, TYPE_CODE, LogData


class SessionIntent(nn.Module):
    """f(context) -> (B, E), a query in the raw content space; untrained it scores 0."""

    def __init__(
        self, embed_dim: int, n_items: int, n_topics: int, n_users: int, hidden: int
    ) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users + 1, embed_dim, padding_idx=0)  # by user id + 1
        nn.init.zeros_(self.user.weight)
        self.n_topics = n_topics
        self.f = nn.Sequential(nn.Linear(2 * embed_dim + 2 * n_topics + 2, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, embed_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.item_bias = nn.Embedding(n_items, 1)  # by item row; only the pretext task uses it
        nn.init.zeros_(self.item_bias.weight)

    def query(
        self, content: torch.Tensor, subtopic: torch.Tensor, r: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The intent query of each request (B, E) from its history tensors (`Requests`)."""
        sess, n = session_mean(content, r)
        s_top = _shares(subtopic[r["o_item"].long()], session_views(r), self.n_topics)
        l_sub = r["l_sub"].long()
        l_top = _shares(l_sub, l_sub > 0, self.n_topics)
        count = [(n > 0).float(), torch.log1p(n.float())]
        ctx = torch.cat([sess, r["l_mean"], s_top, l_top, *count], -1)
        return self.out(self.f(ctx)) + self.user(r["user"])


def _shares(topics: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """(B, L) topic ids under a mask -> (B, n) share of each topic (zeros when none)."""
    out = torch.zeros(len(topics), n).scatter_add_(1, topics, mask.float())
    return out / mask.sum(1, keepdim=True).clamp(min=1)


def _view_positions(logs: LogData, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to n organic-view rows of the train days (sampled, in row order)."""
    j = logs.journeys
    rows = np.nonzero((j.ttype == TYPE_CODE["O"]) & (j.split == SPLIT_CODE["train"]))[0]
    if len(rows) > n:
        rows = np.sort(rng.choice(rows, n, replace=False))
    return rows


def train_intent(
    model: SessionIntent,
    logs: LogData,
    cat: Catalog,
    cfg: CascadeConfig,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Fit the next-organic-view task on the train days; the model is frozen afterwards."""
    t0 = time.perf_counter()
    pos = _view_positions(logs, cfg.intent_views, rng)
    if len(pos) == 0:
        return {"n_views": 0, "seconds": 0.0}
    req: Requests = request_features(
        logs.journeys, logs.users, cat, pos, cfg.n_hist_organic, 1, cfg.n_long
    )
    target = torch.from_numpy(logs.journeys.item[pos] + 1)  # item rows
    content = torch.from_numpy(cat.content)
    subtopic = torch.from_numpy(cat.subtopic)
    organic = torch.from_numpy(np.nonzero((cat.ad_slot == 0) & (cat.subtopic > 0))[0])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.intent_lr)
    model.train()
    losses: list[float] = []
    for _ in range(cfg.intent_epochs):
        perm = rng.permutation(len(pos))
        for lo in range(0, len(perm), cfg.batch_size):
            idx = perm[lo : lo + cfg.batch_size]
            r = req.take(idx).tensors()
            neg = organic[torch.from_numpy(rng.integers(0, len(organic), cfg.intent_negatives))]
            cand = torch.cat([target[idx], neg])  # the batch's targets are negatives of the others
            q = model.query(content, subtopic, r)
            logits = q @ content[cand].T + model.item_bias(cand)[:, 0]
            loss = F.cross_entropy(logits, torch.arange(len(idx)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    model.requires_grad_(False)
    k = max(1, len(losses) // 10)
    return {
        "n_views": len(pos),
        "first_loss": float(np.mean(losses[:k])),
        "last_loss": float(np.mean(losses[-k:])),
        "seconds": round(time.perf_counter() - t0, 1),
    }

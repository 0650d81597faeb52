"""Rollouts shared by DPO, HEPO and the value evaluation.

A request set (E positions of the model journeys, optionally with a replaced environment for
ARR) becomes a batch with one prediction per request; the policy samples K candidate paths per
request inside the trie of the ads eligible for it (targeting admits the user, the ad is active
that day), K split evenly over the MTP heads; `level_dists` recomputes, with gradients, every
level's log-distribution over the legal codes along those paths (teacher forcing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpr.market.ads import Ads, Users, eligible_mask
from gpr.model.gpr import GPRModel
from gpr.model.journey import Batch
from gpr.model.prepare import Prepared
from gpr.model.ptd import masked_log_softmax
from gpr.model.trie import Trie


@dataclass
class RequestSet:
    """Requests as E positions of `Prepared.journeys`; env (B, 4) replaces scene/slot/device/hour
    (-1 keeps a field)."""

    pos: np.ndarray
    env: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pos)

    def take(self, idx: np.ndarray) -> RequestSet:
        return RequestSet(self.pos[idx], None if self.env is None else self.env[idx])

    @staticmethod
    def concat(parts: list[RequestSet]) -> RequestSet:
        pos = np.concatenate([p.pos for p in parts])
        if all(p.env is None for p in parts):
            return RequestSet(pos)
        env = [p.env if p.env is not None else np.full((len(p), 4), -1) for p in parts]
        return RequestSet(pos, np.concatenate(env))


@dataclass
class Rollout:
    """R sampled candidates: request row, MTP head, path codes (R, D) and the ad item id."""

    req: torch.Tensor
    head: torch.Tensor
    codes: torch.Tensor
    item: torch.Tensor

    def __len__(self) -> int:
        return len(self.item)


class RequestContext:
    """Turns request sets into model batches, eligibility masks and simulator arguments."""

    def __init__(self, prep: Prepared, ads: Ads, users: Users) -> None:
        self.prep, self.ads, self.users = prep, ads, users
        self.cols = ads.index_of(prep.trie.items.numpy())  # trie column -> ad index
        items = prep.trie.items
        self.trie_col = torch.full((int(items.max()) + 1,), -1, dtype=torch.long)
        self.trie_col[items] = torch.arange(len(items))  # item id -> trie column

    def user_ids(self, req: RequestSet) -> np.ndarray:
        j = self.prep.journeys
        return j.users[np.searchsorted(j.indptr, req.pos, side="right") - 1]

    def request_ids(self, req: RequestSet) -> np.ndarray:
        return self.prep.journeys.request[req.pos]

    def batch(self, req: RequestSet, max_len: int, thoughts: int) -> Batch:
        """One prediction per request, at its E token (labels of no split are attached)."""
        b = self.prep.at_requests(req.pos, max_len, thoughts)
        if req.env is not None:
            cur = b.field[b.pred_b, b.pred_t]
            env = torch.from_numpy(req.env)
            b.field[b.pred_b, b.pred_t] = torch.where(env >= 0, env, cur)
        return b

    def ad_eligible(self, req: RequestSet) -> np.ndarray:
        """(B, A) bool over ad indices: targeting admits the user and the ad is active that day."""
        return eligible_mask(
            self.ads, self.users, self.user_ids(req), self.prep.journeys.day[req.pos]
        )

    def eligible(self, req: RequestSet, ad_mask: np.ndarray | None = None) -> torch.Tensor:
        """(B, trie items) bool: `ad_eligible` in the trie's column order."""
        m = self.ad_eligible(req) if ad_mask is None else ad_mask
        ok = self.cols >= 0
        return torch.from_numpy(np.where(ok[None, :], m[:, np.maximum(self.cols, 0)], False))

    def prepare(
        self, req: RequestSet, max_len: int, thoughts: int
    ) -> tuple[RequestSet, Batch, torch.Tensor, np.ndarray]:
        """Drop the requests no ad is eligible for; their batch and eligibility (trie, ads)."""
        ads = self.ad_eligible(req)
        keep = np.nonzero(ads.any(1))[0]
        req, ads = req.take(keep), ads[keep]
        return req, self.prep.at_requests(req.pos, max_len, thoughts), self.eligible(req, ads), ads


def split_heads(k: int, n_heads: int) -> list[int]:
    """K candidates over N heads, as evenly as possible (the first heads take the remainder)."""
    return [k // n_heads + int(j < k % n_heads) for j in range(n_heads)]


@torch.no_grad()
def sample(
    model: GPRModel,
    b: Batch,
    trie: Trie,
    counts: list[torch.Tensor],
    k: int,
    temperature: float = 1.0,
    gen: torch.Generator | None = None,
) -> Rollout:
    """K paths per prediction of `b`, sampled level by level from the masked softmax."""
    h, ctx, ok = model.encode(b)
    reqs, heads, codes = [], [], []
    for j, kj in enumerate(split_heads(k, model.cfg.mtp_heads)):
        if kj == 0:
            continue
        prefix, _ = model.ptd.prefix(h, ctx, ok, j)
        rows = torch.arange(h.shape[0], device=h.device).repeat_interleave(kj)
        pre = prefix.repeat_interleave(kj, dim=0)
        node = torch.zeros(len(rows), dtype=torch.long, device=h.device)
        c = torch.zeros(len(rows), 0, dtype=torch.long, device=h.device)
        for lv in range(trie.depth):
            lg = model.ptd.logits(pre, model.code_inputs(c))[lv]
            lp = masked_log_softmax(lg / temperature, trie.legal(lv, node, counts, rows))
            pick = torch.multinomial(lp.exp().nan_to_num(0.0), 1, generator=gen).squeeze(1)
            node = trie.child[lv][node, pick]
            c = torch.cat([c, pick.unsqueeze(1)], dim=1)
        reqs.append(rows)
        heads.append(torch.full_like(rows, j))
        codes.append(c)
        assert (node >= 0).all(), "sampling left the trie"
    code_t = torch.cat(codes)
    leaf = trie.walk(code_t)
    return Rollout(torch.cat(reqs), torch.cat(heads), code_t, trie.leaf_item[leaf])


def level_dists(
    model: GPRModel,
    b: Batch,
    trie: Trie,
    counts: list[torch.Tensor],
    roll: Rollout,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Per level: log-softmax over the legal codes (R, size_l) and the legal mask; intent (R, d)."""
    h, ctx, ok = model.encode(b)
    parents = trie.parents(roll.codes)
    depth = trie.depth
    lps = [h.new_full((len(roll), s), -torch.inf) for s in trie.sizes]
    legal = [torch.zeros(len(roll), s, dtype=torch.bool, device=h.device) for s in trie.sizes]
    for j in range(model.cfg.mtp_heads):
        sel = torch.nonzero(roll.head == j).squeeze(1)
        if not len(sel):
            continue
        r = roll.req[sel]
        prefix, _ = model.ptd.prefix(h[r], ctx[r], ok[r], j)
        logits = model.ptd.logits(prefix, model.code_inputs(roll.codes[sel, : depth - 1]))
        for lv in range(depth):
            lg = trie.legal(lv, parents[sel, lv], counts, r)
            legal[lv] = legal[lv].index_copy(0, sel, lg)
            lps[lv] = lps[lv].index_copy(0, sel, masked_log_softmax(logits[lv], lg))
    return lps, legal, h[roll.req]


def taken(lps: list[torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
    """(R, D) log-probability of the chosen code at every level."""
    return torch.stack(
        [lp.gather(1, codes[:, lv : lv + 1]).squeeze(1) for lv, lp in enumerate(lps)], 1
    )


def level_kl(lps: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
    """(R, D) KL(π || π_ref) over the legal codes of every level."""
    out = []
    for lp, lr in zip(lps, ref, strict=True):
        ok = torch.isfinite(lp) & torch.isfinite(lr)
        diff = torch.where(ok, lp, 0.0) - torch.where(ok, lr, 0.0)  # no inf - inf in the graph
        out.append((lp.exp() * diff).sum(1))
    return torch.stack(out, 1)

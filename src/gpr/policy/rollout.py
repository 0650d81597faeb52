"""Rollouts shared by DPO, HEPO and the value evaluation.

A request batch (`market.policy.RequestBatch`: logged requests, or ARR's with a replaced
environment) becomes a model batch with one prediction per request (`Prepared.at_batch`); the
policy samples K candidate paths per request inside the trie of the ads eligible for it
(targeting admits the user, the ad is active that day), K split evenly over the MTP heads;
`level_dists` recomputes, with gradients, every level's log-distribution over the legal codes
along those paths (teacher forcing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpr.market.policy import RequestBatch
from gpr.model.gpr import GPRModel
from gpr.model.journey import Batch
from gpr.model.ptd import masked_log_softmax, start_decode, step_decode
from gpr.model.trie import Trie


@dataclass
class Rollout:
    """R sampled candidates: request row, MTP head, path codes (R, D) and the ad item id."""

    req: torch.Tensor
    head: torch.Tensor
    codes: torch.Tensor
    item: torch.Tensor

    def __len__(self) -> int:
        return len(self.item)


def servable(batch: RequestBatch) -> RequestBatch:
    """The requests of `batch` that at least one ad is eligible for."""
    return batch.take(np.nonzero(batch.eligible.any(1))[0])


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
        p = h.shape[0]
        rows = torch.arange(p, device=h.device).repeat_interleave(kj)
        node = torch.zeros(len(rows), dtype=torch.long, device=h.device)
        c = torch.zeros(len(rows), 0, dtype=torch.long, device=h.device)
        if not model.training:  # the prefix once per request, then one token per sample
            first, cache = start_decode(model.ptd, prefix)
            cache.reorder(torch.zeros(p, kj, dtype=torch.long, device=h.device))
        for lv in range(trie.depth):
            if model.training:
                lg = model.ptd.logits(prefix[rows], model.code_inputs(c))[lv]
            elif lv == 0:
                lg = first[rows]
            else:
                z = model.embed.codes[lv - 1](c[:, -1]).reshape(p, kj, -1)
                lg = step_decode(model.ptd, cache, z, lv).reshape(p * kj, -1)
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

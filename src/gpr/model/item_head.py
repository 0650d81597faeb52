"""Item head: one dense score per generatable item, beside PTD's level-by-level SID decoder.

PTD's refiner approximates the target ad's embedding (spec §3.2); this head makes that usable for
ranking. The thinking summary of an MTP head becomes a query; an item's key is its SID embedding
(the sum of its level-code embeddings, shared with the inputs) plus its projected content vector,
so every item has a key, also one never seen in training. Training: a full-softmax cross-entropy
over `trie.items` (SASRec's objective, without SASRec's item-id table). Generation
(`GPRModel.generate`): the beam plus the head's top-`widen` items, each scored by
log p_SID(item) + alpha · log p_head(item), a product of the two experts.

With `neighbours` = K > 0 the head's logits also get beta · cos(c_last, c_item) for the K nearest
generatable items of the user's last item in the full content space (a learnt beta, one scalar):
the last-item nearest-neighbour lookup of `experiments/public/knn.py`, inside the model, at full
content width instead of through the d-wide key projection.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gpr.model.embed import TokenEmbedding
from gpr.model.trie import Trie


class ItemHead(nn.Module):
    content: torch.Tensor

    def __init__(
        self, d: int, content: torch.Tensor | None = None, neighbours: int = 0, beta: float = 10.0
    ) -> None:
        super().__init__()
        if neighbours > 0 and content is None:
            raise ValueError("model.item_head.neighbours needs the items' content table")
        self.neighbours = neighbours
        # the neighbour prior's weight, as log beta so that it stays positive and scales freely
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta))) if neighbours > 0 else None
        # (trie id, cols, sims): Trie.to moves a trie in place, so the device is checked too
        self._table: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self.query = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
        self.content_key = nn.Linear(content.shape[1], d) if content is not None else None
        if content is not None:  # rebuilt from the data on load, not part of the checkpoint
            self.register_buffer("content", content.float(), persistent=False)

    def keys(self, embed: TokenEmbedding, trie: Trie) -> torch.Tensor:
        """(A, d): one key per column of `trie.items`."""
        k = embed.item(trie.paths[:, : len(embed.codes)])
        if self.content_key is not None:
            k = k + self.content_key(self.content[trie.items])
        return k

    def logits(
        self,
        cond: torch.Tensor,
        keys: torch.Tensor,
        last: torch.Tensor | None = None,
        trie: Trie | None = None,
    ) -> torch.Tensor:
        """(P, d) thinking summaries, (A, d) keys -> (P, A) logits; with the neighbour prior on,
        `last` (P,) is each prediction's last item id (-1: none) and `trie` the one behind keys."""
        out = self.query(cond) @ keys.T
        if self.log_beta is None or last is None or trie is None:
            return out
        cols, sims = self.neighbour_table(trie)
        has = (last >= 0) & (last < len(cols))
        q = last.clamp(0, len(cols) - 1)
        c = cols[q]  # (P, K)
        bonus = self.log_beta.exp() * sims[q] * (has.unsqueeze(1) & (c >= 0))
        return out.scatter_add(1, c.clamp(min=0), bonus)

    def neighbour_table(self, trie: Trie, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """For every item id: the columns (in `trie.items`) of its `neighbours` nearest
        generatable items by content cosine, itself excluded, and those cosines; (N, K) each,
        column -1 where fewer exist. Built once per trie."""
        t = self._table
        if t is not None and t[0] == id(trie) and t[1].device == trie.items.device:
            return t[1], t[2]
        dev = trie.items.device
        queries = torch.arange(len(self.content), device=dev)
        table = nearest_by_cosine(self.content.to(dev), queries, trie.items, self.neighbours, chunk)
        self._table = (id(trie), *table)
        return table


def nearest_by_cosine(
    space: torch.Tensor, queries: torch.Tensor, cand: torch.Tensor, k: int, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row of `space` (N, D): its k nearest rows among `cand` (A,) by cosine, the
    query row itself excluded. Returns positions in `cand` (Q, k), -1 where fewer exist, and the
    cosines (Q, k), 0 there. Chunked over queries, so memory is chunk × A."""
    unit = space / space.norm(dim=1, keepdim=True).clamp(min=1e-9)
    col = torch.full((len(space),), -1, dtype=torch.long, device=space.device)
    col[cand] = torch.arange(len(cand), device=space.device)
    k, keys = min(k, len(cand)), unit[cand]
    cols, sims = [], []
    for s in range(0, len(queries), chunk):
        q = queries[s : s + chunk]
        sim = unit[q] @ keys.T
        own = col[q]
        sim[own >= 0, own[own >= 0]] = -torch.inf  # not the query itself
        top = sim.topk(k, dim=1)
        ok = torch.isfinite(top.values)
        cols.append(torch.where(ok, top.indices, -1))
        sims.append(torch.where(ok, top.values, 0.0))
    return torch.cat(cols), torch.cat(sims)

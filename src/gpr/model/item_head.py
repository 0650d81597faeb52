"""Item head: one dense score per generatable item, beside PTD's level-by-level SID decoder.

PTD's refiner approximates the target ad's embedding (spec §3.2); this head makes that usable for
ranking. The thinking summary of an MTP head becomes a query; an item's key is its SID embedding
(the sum of its level-code embeddings, shared with the inputs) plus its projected content vector,
so every item has a key, also one never seen in training. Training: a full-softmax cross-entropy
over `trie.items` (SASRec's objective, without SASRec's item-id table). Generation
(`GPRModel.generate`): the beam plus the head's top-`widen` items, each scored by
log p_SID(item) + alpha · log p_head(item), a product of the two experts.
"""

from __future__ import annotations

import torch
from torch import nn

from gpr.model.embed import TokenEmbedding
from gpr.model.trie import Trie


class ItemHead(nn.Module):
    content: torch.Tensor

    def __init__(self, d: int, content: torch.Tensor | None = None) -> None:
        super().__init__()
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

    def logits(self, cond: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(P, d) thinking summaries, (A, d) keys -> (P, A) logits."""
        return self.query(cond) @ keys.T

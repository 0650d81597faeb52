"""SASRec (Kang & McAuley 2018): ID-based causal self-attention, scored against all target items.

Tokens: an O/I token is its learned item-ID embedding (one table for organic items and ads);
every token also gets the shared non-SID part of `TokenEmbedding` — type + learned position, the E
token's field embeddings, the U token's feature embedding and the I token's action. No semantic
IDs are used. 2 pre-norm blocks by default (`layers`), dropout, causal attention over the window.

Output: the hidden state at each prediction position dotted with the item embeddings of every
generatable item (`trie.items`), trained with a full-softmax cross-entropy over them (the usual
modern SASRec training; the paper used one sampled negative with binary cross-entropy).
Generation: the top-`beam` items by score (over the eligible ones when a mask is given).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from gpr.core.config import ModelConfig
from gpr.model.embed import TokenEmbedding
from gpr.model.journey import Batch
from gpr.model.masks import causal_mask
from gpr.model.trie import Trie


class Attention(nn.Module):
    """Multi-head attention of x over mem (self-attention when mem is x); mask True = attend."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        assert d % heads == 0, "d_model must be divisible by heads"
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)

    def forward(
        self, x: torch.Tensor, mem: torch.Tensor, mask: torch.Tensor | None, causal: bool = False
    ) -> torch.Tensor:
        b, t, d = x.shape
        s, h = mem.shape[1], self.heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(mem).view(b, s, 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, mask, self.dropout if self.training else 0.0, is_causal=causal
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Sequential):
    def __init__(self, d: int, dropout: float) -> None:
        super().__init__(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, dropout)
        self.mlp = MLP(d, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, mask))
        return x + self.mlp(self.ln2(x))


def zero_pad_codes(embed: TokenEmbedding) -> None:
    """Make the pad code embed to zero (TokenEmbedding's init also draws the padding rows)."""
    with torch.no_grad():
        for weight in embed.codes.parameters():
            weight[embed.codebook_size].zero_()


class SASRec(nn.Module):
    def __init__(self, cfg: ModelConfig, n_items: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg, self.n_items = cfg, n_items
        self.items = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        nn.init.normal_(self.items.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[n_items].zero_()
        self.context = TokenEmbedding(d, 1, 1, cfg.max_len)  # its one code level stays unused
        zero_pad_codes(self.context)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)

    def encode(self, b: Batch) -> torch.Tensor:
        """Hidden state (P, d) at each prediction position."""
        ok = (b.item >= 0) & (b.item < self.n_items)
        ids = torch.where(ok, b.item, self.n_items)
        no_sid = torch.ones_like(b.codes[..., :1])  # the pad code: the SID part embeds to zero
        x = self.context(replace(b, codes=no_sid)) + self.items(ids)
        x = self.drop(x * (b.ttype >= 0).unsqueeze(-1))
        mask = causal_mask(b.ttype).unsqueeze(1)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x[b.pred_b, b.pred_t])

    def scores(self, b: Batch, trie: Trie) -> torch.Tensor:
        """(P, A) logits over `trie.items`."""
        return self.encode(b) @ self.items(trie.items).T

    def loss(
        self, b: Batch, trie: Trie, target_weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = self.scores(b, trie)
        idx = trie.column(b.targets[:, 0])
        rows = idx >= 0
        nll = F.cross_entropy(logits[rows], idx[rows], reduction="none")
        w = target_weight[rows, 0] if target_weight is not None else torch.ones_like(nll)
        loss = (nll * w).sum() / w.sum().clamp(min=1e-8) + 0.0 * logits.sum()
        return {"loss": loss}

    @torch.no_grad()
    def generate(
        self, b: Batch, trie: Trie, beam: int, eligible: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`beam` items per prediction (P, beam), -1 padded, best first; log-softmax scores."""
        lp = torch.log_softmax(self.scores(b, trie), dim=-1)
        if eligible is not None:
            lp = lp.masked_fill(~eligible, -math.inf)
        scores, idx = lp.topk(min(beam, lp.shape[1]), dim=1)
        return torch.where(torch.isfinite(scores), trie.items[idx], -1), scores

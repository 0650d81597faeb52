"""TIGER (Rajput et al. 2023): an encoder-decoder that reads semantic IDs and generates one.

Encoder input: every O/I item becomes its L code tokens (per-level code embedding + a level
embedding); the de-dup level is not an input. E and U tokens stay one token each. Every token
also carries the non-SID part of `TokenEmbedding` (type, the learned position of its journey
token, E fields, U feature, I action), so an item's L code tokens share one position.

Unlike TIGER, whose bidirectional encoder reads one history per target, a window here holds many
prediction positions, so the encoder is causal at the journey-token level (a code token sees its
own item and everything before it) and the decoder of the prediction at token t attends only to
the memory of tokens <= t: one encoder pass per window, no leak.

Decoder: [BOS, z_1, ..., z_L] -> z_1, ..., z_L, de-dup (teacher forcing), one output head per
level, cross-entropy normalised over the codes legal under the trie (as GPRModel.loss).
Generation: trie-constrained beam search, batched over predictions and beams. The decoder runs
on a (window, prediction-in-window) grid so the memory is never copied per prediction or beam.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from gpr.core.config import ModelConfig
from gpr.model.baselines.sasrec import MLP, Attention, Block, zero_pad_codes
from gpr.model.embed import TokenEmbedding
from gpr.model.gpr import merge_ranked
from gpr.model.journey import Batch, I, O
from gpr.model.ptd import masked_log_softmax
from gpr.model.trie import Trie


class DecoderBlock(nn.Module):
    """Causal self-attention within each decoded path, cross-attention to the window's memory."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, heads, dropout)
        self.cross = Attention(d, heads, dropout)
        self.mlp = MLP(d, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, G, W, n, d) paths per window; mem (B, S, d); mask (B, 1, G*W*n, S)."""
        b, g, w, n, d = x.shape
        y = x.reshape(b * g * w, n, d)
        h = self.ln1(y)
        y = (y + self.drop(self.self_attn(h, h, None, causal=True))).reshape(b, g * w * n, d)
        y = y + self.drop(self.cross(self.ln2(y), mem, mask))
        y = y + self.mlp(self.ln3(y))
        return y.reshape(b, g, w, n, d)


def grid_slots(pred_b: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, int]:
    """Rank of each prediction among those of its window, and the most any window has."""
    order = torch.argsort(pred_b, stable=True)
    counts = torch.bincount(pred_b, minlength=n_rows)
    start = counts.cumsum(0) - counts
    slot = torch.empty_like(pred_b)
    slot[order] = torch.arange(len(pred_b), device=pred_b.device) - start[pred_b[order]]
    return slot, int(counts.max()) if len(pred_b) else 0


class TIGER(nn.Module):
    def __init__(self, cfg: ModelConfig, levels: int, codebook_size: int, dedup_size: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg, self.levels, self.codebook_size = cfg, levels, codebook_size
        self.level_sizes = [codebook_size] * levels + [dedup_size]
        self.embed = TokenEmbedding(d, levels, codebook_size, cfg.max_len)  # shared with decoder
        zero_pad_codes(self.embed)
        self.level = nn.Embedding(levels + 1, d)
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(Block(d, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.enc_norm = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(
            DecoderBlock(d, cfg.heads, cfg.dropout) for _ in range(cfg.layers)
        )
        self.dec_norm = nn.LayerNorm(d)
        self.out = nn.ModuleList(nn.Linear(d, s) for s in self.level_sizes)

    # --- encoder ------------------------------------------------------------------------------
    def encode(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory (B, T*L, d) over the code-token sequence and which slots are real (B, T*L)."""
        bsz, t, n_lv = b.codes.shape
        k = self.codebook_size
        ctx = self.embed(replace(b, codes=torch.full_like(b.codes, k)))  # (B, T, d), no SIDs
        is_item = (b.ttype == O) | (b.ttype == I)
        codes = b.codes.clamp(0, k)
        per_level = torch.stack([emb(codes[..., lv]) for lv, emb in enumerate(self.embed.codes)], 2)
        per_level = per_level + self.level.weight[:n_lv]
        x = ctx.unsqueeze(2) + per_level * is_item[..., None, None]  # (B, T, L, d)
        first = torch.arange(n_lv, device=codes.device) == 0
        valid = (b.ttype >= 0).unsqueeze(-1) & (is_item.unsqueeze(-1) | first)  # (B, T, L)
        s = t * n_lv
        x = self.drop(x.reshape(bsz, s, -1) * valid.reshape(bsz, s, 1))
        valid = valid.reshape(bsz, s)
        tok = torch.arange(s, device=codes.device) // n_lv
        eye = torch.eye(s, dtype=torch.bool, device=codes.device)
        mask = ((tok.unsqueeze(0) <= tok.unsqueeze(1)) & valid.unsqueeze(1)) | eye
        for blk in self.encoder:
            x = blk(x, mask.unsqueeze(1))
        return self.enc_norm(x), valid

    # --- decoder ------------------------------------------------------------------------------
    def decode(
        self,
        mem: torch.Tensor,
        valid: torch.Tensor,
        pred_b: torch.Tensor,
        pred_t: torch.Tensor,
        z: torch.Tensor,
    ) -> torch.Tensor:
        """Paths z (P, W, m) of codes 1..m (m <= L) -> decoder states (P, W, m+1, d).

        State i predicts level i+1; prediction p sees the memory of journey tokens <= pred_t[p].
        """
        p, w, m = z.shape
        bsz, s, d = mem.shape
        embs = [self.bos.expand(p, w, d)]
        embs += [self.embed.codes[lv](z[..., lv].clamp(0, self.codebook_size)) for lv in range(m)]
        x = self.drop(torch.stack(embs, 2) + self.level.weight[: m + 1])
        slot, g = grid_slots(pred_b, bsz)
        grid = x.new_zeros(bsz, g, w, m + 1, d)
        grid[pred_b, slot] = x
        tok = torch.arange(s, device=mem.device) // self.levels  # journey token of each slot
        vis = torch.ones(bsz, g, s, dtype=torch.bool, device=mem.device)  # empty cells: all
        vis[pred_b, slot] = valid[pred_b] & (tok.unsqueeze(0) <= pred_t.unsqueeze(1))
        mask = vis.unsqueeze(2).expand(bsz, g, w * (m + 1), s).reshape(bsz, 1, -1, s)
        for blk in self.decoder:
            grid = blk(grid, mem, mask)
        return self.dec_norm(grid[pred_b, slot])

    # --- training -----------------------------------------------------------------------------
    def loss(
        self, b: Batch, trie: Trie, target_weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        mem, valid = self.encode(b)
        paths = b.target_codes[:, 0]  # (P, L+1)
        parents = trie.parents(paths)
        rows = (parents >= 0).all(dim=1)
        if not rows.any():
            return {"loss": 0.0 * mem.sum()}
        p = paths[rows]
        hid = self.decode(mem, valid, b.pred_b[rows], b.pred_t[rows], p[:, None, : self.levels])
        nll = mem.new_zeros(len(p))
        for lv, head in enumerate(self.out):
            lp = masked_log_softmax(head(hid[:, 0, lv]), trie.legal(lv, parents[rows, lv]))
            nll = nll - lp.gather(1, p[:, lv : lv + 1]).squeeze(1)
        w = target_weight[rows, 0] if target_weight is not None else torch.ones_like(nll)
        return {"loss": (nll * w).sum() / w.sum().clamp(min=1e-8)}

    def level_logits(self, b: Batch, z: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced logits (P, size) of levels 1..m+1 given codes z (P, m)."""
        mem, valid = self.encode(b)
        hid = self.decode(mem, valid, b.pred_b, b.pred_t, z.unsqueeze(1))[:, 0]
        return [self.out[lv](hid[:, lv]) for lv in range(min(z.shape[1] + 1, len(self.out)))]

    # --- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, b: Batch, trie: Trie, beam: int, eligible: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Trie-constrained beam search -> items (P, beam) (-1 padded, best first), log-probs.

        eligible: (P, A) bool over `trie.items` (None = every item).
        """
        mem, valid = self.encode(b)
        counts = trie.eligible_counts(eligible) if eligible is not None else None
        p, dev = len(b.pred_b), mem.device
        nodes = torch.zeros(p, 1, dtype=torch.long, device=dev)
        logp = torch.zeros(p, 1, device=dev)
        codes = torch.zeros(p, 1, 0, dtype=torch.long, device=dev)
        for lv in range(trie.depth):
            w = nodes.shape[1]
            hid = self.decode(mem, valid, b.pred_b, b.pred_t, codes)[:, :, lv]  # (P, W, d)
            rows = torch.arange(p, device=dev).repeat_interleave(w)
            legal = trie.legal(lv, nodes.reshape(-1), counts, rows)
            lp = masked_log_softmax(self.out[lv](hid).reshape(p * w, -1), legal).reshape(p, w, -1)
            total = (logp.unsqueeze(-1) + lp).reshape(p, -1)
            total = total.masked_fill(total.isnan(), -math.inf)  # dead beams (no legal code)
            logp, idx = total.topk(min(beam, total.shape[1]), dim=1)
            size = lp.shape[-1]
            src, code = idx // size, idx % size
            parent = nodes.gather(1, src)
            nxt = trie.child[lv][parent.clamp(min=0), code]
            nodes = torch.where(torch.isfinite(logp) & (parent >= 0), nxt, -1)
            kept = codes.gather(1, src.unsqueeze(-1).expand(-1, -1, lv))
            codes = torch.cat([kept, code.unsqueeze(-1)], dim=-1)
        items = torch.where(nodes >= 0, trie.leaf_item[nodes.clamp(min=0)], -1)
        return merge_ranked(items, torch.where(nodes >= 0, logp, -math.inf), beam)

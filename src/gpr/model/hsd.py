"""HSD — Heterogeneous Sequence-wise Decoder (spec §3.1).

HSTU-style blocks, `Softmax(QK^T/sqrt(d) + M) V * silu(U)`, with the hybrid mask, token-aware
LayerNorm / FFN (separate parameters per token type) and a mixture-of-recursions block. With
`time_bias`, each block adds HSTU's temporal bias: a learned per-head bias by the log2 bucket of
the time between query and key (masks.time_buckets), so attention can weigh events by their age.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpr.model.masks import NO_TIME

N_TYPES = 4
# The temporal bias is gain x a zero-initialised parameter. Adam moves a parameter by about lr per
# step whatever its gradient, so at unit gain the small preset's one epoch left every bias within
# +-0.24 logits (seed 7) and the model's loss and value fit did not move; the gain lets it reach
# O(1).
TIME_BIAS_GAIN = 10.0


class TokenAwareNorm(nn.Module):
    """LayerNorm whose scale and shift are chosen by token type (shared when not token-aware)."""

    def __init__(self, d: int, token_aware: bool) -> None:
        super().__init__()
        n = N_TYPES if token_aware else 1
        self.weight = nn.Parameter(torch.ones(n, d))
        self.bias = nn.Parameter(torch.zeros(n, d))
        self.token_aware = token_aware

    def forward(self, x: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x, x.shape[-1:])
        idx = types if self.token_aware else torch.zeros_like(types)
        return h * self.weight[idx] + self.bias[idx]


class TokenAwareFFN(nn.Module):
    """Per-type feed-forward networks; tokens are grouped by type so each FFN runs once."""

    def __init__(self, d: int, token_aware: bool, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        n = N_TYPES if token_aware else 1
        self.ffn = nn.ModuleList(
            nn.Sequential(
                nn.Linear(d, mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(mult * d, d)
            )
            for _ in range(n)
        )

    def forward(self, x: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        if len(self.ffn) == 1:
            return self.ffn[0](x)
        out = torch.zeros_like(x)
        for k, ffn in enumerate(self.ffn):
            sel = types == k
            if sel.any():
                out[sel] = ffn(x[sel])
        return out


class HSTUBlock(nn.Module):
    def __init__(
        self,
        d: int,
        heads: int,
        token_aware_ln: bool,
        token_aware_ffn: bool,
        dropout: float,
        time_bias: bool = False,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.time_bias: nn.Parameter | None = None
        if time_bias:  # (buckets, heads) starting at 0, no RNG drawn: the same model as without it
            self.time_bias = nn.Parameter(torch.zeros(NO_TIME + 1, heads))
        self.norm1 = TokenAwareNorm(d, token_aware_ln)
        self.uvqk = nn.Linear(d, 4 * d)
        self.attn_norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, d)
        self.norm2 = TokenAwareNorm(d, token_aware_ln)
        self.ffn = TokenAwareFFN(d, token_aware_ffn, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        types: torch.Tensor,
        mask: torch.Tensor,
        tbucket: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, d), types (B, T), mask (B, T, T) bool; tbucket (B, T, T) with time_bias."""
        b, t, d = x.shape
        u, v, q, k = self.uvqk(self.norm1(x, types)).chunk(4, dim=-1)
        u = F.silu(u)

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        m = mask.unsqueeze(1)
        if self.time_bias is not None:
            if tbucket is None:
                raise ValueError("a block with time_bias needs the batch's time buckets")
            bias = TIME_BIAS_GAIN * self.time_bias[tbucket].permute(0, 3, 1, 2)  # (B, H, T, T)
            m = torch.where(m, bias, -torch.inf)
        a = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=m)
        a = a.transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.proj(self.attn_norm(a) * u))
        return x + self.drop(self.ffn(self.norm2(x, types), types))


class MixtureOfRecursions(nn.Module):
    """A shared block applied up to `max_extra` more times; a per-token router mixes the depths.

    The router's softmax over depths {0..R} weights each token's states after 0..R extra passes
    (a differentiable relaxation of choosing how many passes the token gets).
    """

    def __init__(self, block: HSTUBlock, d: int, max_extra: int) -> None:
        super().__init__()
        self.block = block
        self.router = nn.Linear(d, max_extra + 1)
        self.max_extra = max_extra
        nn.init.zeros_(self.router.weight)
        nn.init.zeros_(self.router.bias)

    def forward(
        self,
        x: torch.Tensor,
        types: torch.Tensor,
        mask: torch.Tensor,
        tbucket: torch.Tensor | None = None,
    ) -> torch.Tensor:
        states = [x]
        h = x
        for _ in range(self.max_extra):
            h = self.block(h, types, mask, tbucket)
            states.append(h)
        p = torch.softmax(self.router(x), dim=-1)  # (B, T, R+1)
        return (torch.stack(states, dim=-1) * p.unsqueeze(-2)).sum(-1)


class HSD(nn.Module):
    def __init__(
        self,
        d: int,
        layers: int,
        heads: int,
        dropout: float,
        token_aware_ln: bool,
        token_aware_ffn: bool,
        mor_extra: int,
        time_bias: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            HSTUBlock(d, heads, token_aware_ln, token_aware_ffn, dropout, time_bias)
            for _ in range(layers)
        )
        self.mor = (
            MixtureOfRecursions(
                HSTUBlock(d, heads, token_aware_ln, token_aware_ffn, dropout, time_bias),
                d,
                mor_extra,
            )
            if mor_extra > 0
            else None
        )
        self.norm = TokenAwareNorm(d, token_aware_ln)

    def forward(
        self,
        x: torch.Tensor,
        types: torch.Tensor,
        mask: torch.Tensor,
        tbucket: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, types, mask, tbucket)
        if self.mor is not None:
            x = self.mor(x, types, mask, tbucket)
        return self.norm(x, types)

"""PTD — Progressive Token-wise Decoder (spec §3.2): thinking -> refining -> generation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Refiner(nn.Module):
    """A small diffusion denoiser: it refines a token towards the target ad's embedding.

    Train: noise-prediction MSE on the (detached) target embedding, conditioned on the thinking
    summary. Serve (and feed generation): a few deterministic DDIM steps from zero.
    """

    abar: torch.Tensor

    def __init__(self, d: int, steps: int = 4, t_max: int = 100) -> None:
        super().__init__()
        betas = torch.linspace(1e-4, 0.05, t_max)
        self.register_buffer("abar", torch.cumprod(1 - betas, dim=0))
        self.t_max, self.steps = t_max, steps
        self.t_emb = nn.Embedding(t_max, d)
        self.net = nn.Sequential(nn.Linear(3 * d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def eps(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, cond, self.t_emb(t)], dim=-1))

    def loss(self, target: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = torch.randint(0, self.t_max, (target.shape[0],), device=target.device)
        ab = self.abar[t].unsqueeze(-1)
        noise = torch.randn_like(target)
        x = ab.sqrt() * target + (1 - ab).sqrt() * noise
        return F.mse_loss(self.eps(x, cond, t), noise)

    def sample(self, cond: torch.Tensor) -> torch.Tensor:
        ts = torch.linspace(self.t_max - 1, 0, self.steps, device=cond.device).long()
        x = torch.zeros_like(cond)
        abar = self.abar
        for i, t in enumerate(ts):
            tt = t.expand(cond.shape[0])
            ab = abar[t]
            e = self.eps(x, cond, tt)
            x0 = (x - (1 - ab).sqrt() * e) / ab.sqrt()
            ab_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=cond.device)
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * e
        return x


class PTD(nn.Module):
    def __init__(
        self,
        d: int,
        heads: int,
        n_mtp: int,
        n_think: int,
        refining: bool,
        refine_steps: int,
        decoder_layers: int,
        level_sizes: list[int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.n_think = n_think
        self.level_sizes = level_sizes
        if n_think > 0:
            self.queries = nn.Parameter(torch.randn(n_mtp, n_think, d) * 0.02)
            self.think = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
            self.think_norm = nn.LayerNorm(d)
        self.head_emb = nn.Parameter(torch.randn(n_mtp, d) * 0.02)
        self.refiner = Refiner(d, refine_steps) if refining else None
        n_prefix = max(n_think, 1) + int(refining)
        self.pos = nn.Embedding(n_prefix + len(level_sizes), d)
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerEncoder(layer, decoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.ModuleList(nn.Linear(d, s) for s in level_sizes)

    def prefix(
        self, h: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor, head: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Thinking (+ refined) tokens of MTP head `head` (P, n_prefix, d), refiner condition."""
        base = h + self.head_emb[head]
        if self.n_think > 0:
            q = self.queries[head].unsqueeze(0) + base.unsqueeze(1)
            a, _ = self.think(q, ctx, ctx, key_padding_mask=~ctx_mask, need_weights=False)
            toks = self.think_norm(q + a)
        else:
            toks = base.unsqueeze(1)
        cond = toks.sum(dim=1)
        if self.refiner is not None:
            toks = torch.cat([toks, self.refiner.sample(cond).unsqueeze(1)], dim=1)
        return toks, cond

    def logits(self, prefix: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced / incremental pass over [prefix, z_1..z_m] (z: (N, m, d) code embeddings).

        Returns the logits of levels 1..m+1 (those that exist).
        """
        x = torch.cat([prefix, z], dim=1)
        n = x.shape[1]
        x = x + self.pos(torch.arange(n, device=x.device)).unsqueeze(0)
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        y = self.norm(self.decoder(x, mask=mask))
        first = prefix.shape[1] - 1
        m = min(z.shape[1] + 1, len(self.out))
        return [self.out[lv](y[:, first + lv]) for lv in range(m)]


def masked_log_softmax(logits: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.masked_fill(~legal, -math.inf), dim=-1)


class DecodeCache:
    """Keys and values of the generation decoder during beam search (inference only): the prefix
    tokens' once per request, (P, n, H, dh) per layer, and the code tokens' per beam,
    (P, W, t, H, dh) per layer, reordered with the beams."""

    def __init__(self, pre_k: list[torch.Tensor], pre_v: list[torch.Tensor]) -> None:
        self.pre_k, self.pre_v = pre_k, pre_v
        p, _, h, dh = pre_k[0].shape
        empty = pre_k[0].new_zeros(p, 1, 0, h, dh)
        self.k = [empty for _ in pre_k]
        self.v = [empty for _ in pre_k]
        self.n_prefix = pre_k[0].shape[1]

    def reorder(self, src: torch.Tensor) -> None:
        """Keep the beams `src` (P, W') of the current ones (their parents)."""
        idx = src[:, :, None, None, None]
        for i in range(len(self.k)):
            shape = (*src.shape, *self.k[i].shape[2:])
            self.k[i] = self.k[i].gather(1, idx.expand(shape))
            self.v[i] = self.v[i].gather(1, idx.expand(shape))


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)


def _qkv(
    layer: nn.TransformerEncoderLayer, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    attn = layer.self_attn
    q, k, v = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    h = attn.num_heads
    return _heads(q, h), _heads(k, h), _heads(v, h)


def _finish(layer: nn.TransformerEncoderLayer, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The rest of a pre-norm layer after attention (heads `a` merged): residual and FFN."""
    x = x + layer.self_attn.out_proj(a.flatten(-2))
    return x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))


@torch.no_grad()
def start_decode(ptd: PTD, prefix: torch.Tensor) -> tuple[torch.Tensor, DecodeCache]:
    """Run the prefix tokens (P, n, d) once: level-1 logits (P, size_1) and the cache."""
    n = prefix.shape[1]
    x = prefix + ptd.pos(torch.arange(n, device=prefix.device)).unsqueeze(0)
    causal = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
    ks, vs = [], []
    for layer in ptd.decoder.layers:
        q, k, v = _qkv(layer, x)
        s = torch.einsum("pihd,pjhd->phij", q, k) / math.sqrt(q.shape[-1])
        a = torch.einsum("phij,pjhd->pihd", s.masked_fill(causal, -math.inf).softmax(-1), v)
        x = _finish(layer, x, a)
        ks.append(k)
        vs.append(v)
    return ptd.out[0](ptd.norm(x[:, -1])), DecodeCache(ks, vs)


@torch.no_grad()
def step_decode(ptd: PTD, cache: DecodeCache, z: torch.Tensor, level: int) -> torch.Tensor:
    """One code token per beam, z (P, W, d) the embedding of the code chosen at `level` - 1:
    the logits of `level` (P, W, size), its keys and values appended to the cache."""
    pos = cache.n_prefix + level - 1
    x = z + ptd.pos.weight[pos]
    for i, layer in enumerate(ptd.decoder.layers):
        q, k, v = _qkv(layer, x)  # (P, W, H, dh)
        cache.k[i] = torch.cat([cache.k[i], k.unsqueeze(2)], 2)
        cache.v[i] = torch.cat([cache.v[i], v.unsqueeze(2)], 2)
        scale = 1 / math.sqrt(q.shape[-1])
        s_pre = torch.einsum("pwhd,pnhd->pwhn", q, cache.pre_k[i]) * scale
        s_own = torch.einsum("pwhd,pwthd->pwht", q, cache.k[i]) * scale
        att = torch.cat([s_pre, s_own], -1).softmax(-1)
        n = s_pre.shape[-1]
        a = torch.einsum("pwhn,pnhd->pwhd", att[..., :n], cache.pre_v[i])
        a = a + torch.einsum("pwht,pwthd->pwhd", att[..., n:], cache.v[i])
        x = _finish(layer, x, a)
    return ptd.out[level](ptd.norm(x))

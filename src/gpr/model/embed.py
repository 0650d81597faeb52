"""Token embeddings: item = sum of its level-code embeddings (one shared SID space) + type."""

from __future__ import annotations

import torch
from torch import nn

from gpr.model.journey import ENV_SIZES, USER_FIELD_SIZES, Batch, E, I, U


class TokenEmbedding(nn.Module):
    content: torch.Tensor

    def __init__(
        self,
        d: int,
        levels: int,
        codebook_size: int,
        max_len: int,
        content: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        # optional (items, dim) content table indexed by item id; rebuilt from the data on load,
        # so it is not part of the checkpoint
        self.content_proj = nn.Linear(content.shape[1], d) if content is not None else None
        if content is not None:
            self.register_buffer("content", content.float(), persistent=False)
        self.codes = nn.ModuleList(
            nn.Embedding(codebook_size + 1, d, padding_idx=codebook_size) for _ in range(levels)
        )
        self.type_emb = nn.Embedding(4, d)
        self.env = nn.ModuleList(nn.Embedding(n, d) for n in ENV_SIZES)
        self.user = nn.ModuleList(nn.Embedding(n, d) for n in USER_FIELD_SIZES)
        self.action = nn.Embedding(3, d)
        self.pos = nn.Embedding(max_len, d)
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
                if m.padding_idx is not None:
                    nn.init.zeros_(m.weight[m.padding_idx])

    def item(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., L) codes -> (..., d); pad code (= codebook_size) embeds to zero."""
        return torch.stack([emb(codes[..., lv]) for lv, emb in enumerate(self.codes)]).sum(0)

    def prefix(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., L) codes -> (..., L, d): embedding of every prefix z_1..z_l (cumulative sums)."""
        per_level = torch.stack([emb(codes[..., lv]) for lv, emb in enumerate(self.codes)], dim=-2)
        return per_level.cumsum(dim=-2)

    def forward(self, b: Batch) -> torch.Tensor:
        t = b.ttype
        types = t.clamp(min=0)
        x = self.type_emb(types) + self.pos(torch.arange(t.shape[1], device=t.device)).unsqueeze(0)
        x = x + self.item(b.codes)
        if self.content_proj is not None:
            known = (b.item >= 0) & (b.item < len(self.content))
            vec = self.content_proj(self.content[b.item.clamp(0, len(self.content) - 1)])
            x = x + vec * known.unsqueeze(-1)
        f = b.field
        env = sum(
            emb(f[..., k].clamp(0, n - 1))
            for k, (emb, n) in enumerate(zip(self.env, ENV_SIZES, strict=True))
        )
        x = x + env * (t == E).unsqueeze(-1)
        user = torch.stack(
            [
                emb(f[..., 1].clamp(0, n - 1))
                for emb, n in zip(self.user, USER_FIELD_SIZES, strict=True)
            ],
            dim=-2,
        )
        group = f[..., 0].clamp(0, len(USER_FIELD_SIZES) - 1)
        user = user.gather(
            -2, group[..., None, None].expand(*group.shape, 1, user.shape[-1])
        ).squeeze(-2)
        x = x + user * (t == U).unsqueeze(-1)
        x = x + self.action(b.action.clamp(0, 2)) * (t == I).unsqueeze(-1)
        return x * (t >= 0).unsqueeze(-1)

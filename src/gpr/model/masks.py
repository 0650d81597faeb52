"""Attention masks over journey tokens (True = may attend)."""

from __future__ import annotations

import torch

from gpr.model.journey import E, I, O, U


def causal_mask(ttype: torch.Tensor) -> torch.Tensor:
    """(B, T, T): each token sees itself and the past; padding keys are hidden."""
    t = ttype.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=ttype.device).tril()
    return _finish(causal.unsqueeze(0) & (ttype >= 0).unsqueeze(1), ttype)


def hybrid_mask(ttype: torch.Tensor) -> torch.Tensor:
    """The leak-free hybrid mask of spec §3.1.

    U tokens are visible to all. Prompt tokens (O/E) also see the other O/E tokens of their own
    request segment in both directions; a segment ends at each E or I token, so a prediction at
    E_r never sees anything after it. I tokens are causal.
    """
    is_u = ttype == U
    prompt = (ttype == O) | (ttype == E)
    ends = ((ttype == E) | (ttype == I)).long()
    seg = torch.cumsum(ends, dim=1) - ends  # E/I tokens strictly before each position
    same = seg.unsqueeze(2) == seg.unsqueeze(1)
    both_prompt = prompt.unsqueeze(2) & prompt.unsqueeze(1)
    t = ttype.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=ttype.device).tril().unsqueeze(0)
    allowed = causal | (same & both_prompt) | is_u.unsqueeze(1)
    allowed &= ~is_u.unsqueeze(2) | is_u.unsqueeze(1)  # U tokens look only at U tokens
    return _finish(allowed & (ttype >= 0).unsqueeze(1), ttype)


def _finish(allowed: torch.Tensor, ttype: torch.Tensor) -> torch.Tensor:
    """Every query sees at least itself, so padded rows never produce NaN."""
    eye = torch.eye(ttype.shape[1], dtype=torch.bool, device=ttype.device).unsqueeze(0)
    return allowed | eye


TIME_BUCKETS = 28  # |dt| buckets: 0 for < 1 s, then 1 + floor(log2 dt) up to 2^26 s (~2 years)
NO_TIME = TIME_BUCKETS  # pairs with a U (or thought) token or padding: no time between them


def time_buckets(ts: torch.Tensor, ttype: torch.Tensor) -> torch.Tensor:
    """(B, T, T) log2 bucket of |ts_q - ts_k| in seconds (HSTU's temporal attention bias);
    NO_TIME where either token is a U token or padding."""
    dt = (ts.unsqueeze(2) - ts.unsqueeze(1)).abs().double()
    b = torch.where(dt < 1, 0.0, 1 + torch.log2(dt.clamp(min=1)).floor())
    b = b.clamp(max=TIME_BUCKETS - 1).long()
    timed = ttype > U
    return torch.where(timed.unsqueeze(2) & timed.unsqueeze(1), b, NO_TIME)

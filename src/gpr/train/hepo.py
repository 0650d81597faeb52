"""HEPO — Hierarchy Enhanced Policy Optimization (spec §4.4, Eq. 5-10).

One step: K candidates per request from the policy inside the eligible-ad trie, the simulator's
final_value as terminal reward R (Eq. 5), process rewards per semantic level from the user's
positive history (Eq. 6-7), GAE over the levels with the HTE critic and, at the leaf, the z-score
of R within the request's K (Eq. 8; or R minus its mean there, `leaf_advantage=center`),
PPO-clip per level with coefficients c_l (Eq. 9), the critic's squared error to the returns
(Eq. 10), and an optional KL to the reference model (decision).

Levels: a path has D = L + 1 decisions (L semantic codes, then the de-dup index, the leaf).
"""

from __future__ import annotations

import torch

from gpr.model.journey import Batch, I, O


def positive_history(b: Batch, req: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (R, T, L) of each rollout row's window and the mask (R, T) of its positives: organic
    views and clicked / converted ads strictly before the prediction position."""
    ttype, act = b.ttype[req], b.action[req]
    before = torch.arange(ttype.shape[1], device=ttype.device)[None, :] < b.pred_t[req][:, None]
    pos = before & ((ttype == O) | ((ttype == I) & (act >= 1)))
    return b.codes[req], pos


def process_rewards(
    hist_codes: torch.Tensor,
    positive: torch.Tensor,
    codes: torch.Tensor,
    legal: list[torch.Tensor],
    alpha: list[float],
) -> torch.Tensor:
    """Eq. 6-7 -> (R, L) rewards of the semantic levels.

    P_l(t): the share of the user's positives whose path prefix through level l equals the
    candidate's prefix with code t at level l. Δ_l = P_l(z_l) - mean of P_l over the legal codes
    at that level (the siblings the policy could have chosen); r_l = α_l · max(0, Δ_l).
    """
    n_lv = hist_codes.shape[-1]
    if len(alpha) != n_lv:
        raise ValueError(f"process_alpha has {len(alpha)} values for {n_lv} semantic levels")
    n = positive.sum(1).clamp(min=1).float()
    eq = hist_codes == codes[:, None, :n_lv]
    match = eq.long().cumprod(-1).bool() & positive[..., None]  # prefix equal through level l
    parent = torch.cat([positive[..., None], match[..., :-1]], -1)  # prefix equal before level l
    out = []
    for lv in range(n_lv):
        size = legal[lv].shape[1]
        hc = hist_codes[..., lv]
        ok_code = hc < size
        legal_hist = legal[lv].gather(1, hc.clamp(max=size - 1)) & ok_code
        p_sel = match[..., lv].sum(1) / n
        p_mean = (parent[..., lv] & legal_hist).sum(1) / n / legal[lv].sum(1).clamp(min=1)
        out.append(alpha[lv] * (p_sel - p_mean).clamp(min=0))
    return torch.stack(out, 1)


def leaf_zscore(reward: torch.Tensor, group: torch.Tensor, rel_eps: float = 1e-6) -> torch.Tensor:
    """(R,) z-score of the terminal reward within each request's candidates (Eq. 8, leaf).

    Computed in float64; a group whose spread is below rel_eps x its scale (all K candidates of
    equal value, e.g. one ad sampled K times) carries no preference and gets 0.
    """
    r = reward.double()
    dev = r - _group_mean(r, group)[group]
    std = _group_mean(dev**2, group).sqrt()
    scale = _group_mean(r.abs(), group)
    flat = std <= rel_eps * scale.clamp(min=1e-12)
    z = torch.where(flat[group], 0.0, dev / std[group].clamp(min=1e-300))
    return z.to(reward.dtype)


def leaf_center(reward: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(R,) the terminal reward minus its mean within each request's candidates (`leaf_advantage
    = center`): a baseline only, so R keeps its scale and, with a KL weight β, the optimum stays
    π ∝ π_ref · exp(R / β) — for R = log final_value, π_ref · final_value^(1/β)."""
    r = reward.double()
    return (r - _group_mean(r, group)[group]).to(reward.dtype)


def _group_mean(x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(G,) mean of x (R,) over each group id 0..G-1 (0 for an empty group)."""
    n_g = int(group.max()) + 1 if len(group) else 0
    zeros = torch.zeros(n_g, dtype=x.dtype, device=x.device)
    cnt = zeros.index_add(0, group, torch.ones_like(x)).clamp(min=1)
    return zeros.index_add(0, group, x) / cnt


def gae(
    rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage over the D decisions of each path.

    rewards (R, D): r_l of each decision (the last one holds R); values (R, D): V before each
    decision; after the leaf the value is 0. Returns advantages and returns (A + V), both (R, D).
    """
    d = rewards.shape[1]
    nxt = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)
    delta = rewards + gamma * nxt - values
    adv = torch.zeros_like(rewards)
    run = torch.zeros_like(rewards[:, 0])
    for lv in reversed(range(d)):
        run = delta[:, lv] + gamma * lam * run
        adv[:, lv] = run
    return adv, adv + values


def ppo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    clip: float,
    coef: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: -Σ_l c_l mean_R min(ρ A, clip(ρ, 1±ε) A); also the clipped fraction."""
    ratio = (logp - old_logp).exp()
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    loss = -(surr.mean(0) * coef).sum()
    frac = ((ratio - 1).abs() > clip).float().mean()
    return loss, frac


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Eq. 10: mean squared error of V(s, z_{1:l-1}) to the return, over levels and paths."""
    return ((values - returns.detach()) ** 2).mean()

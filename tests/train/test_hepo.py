"""HEPO: process rewards, advantages and losses, the terminal reward."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from gpr.core.config import load_config
from gpr.model.journey import Batch, E, I, O, U
from gpr.policy.rollout import (
    level_kl,
)
from gpr.train.align import Aligner
from gpr.train.hepo import (
    gae,
    leaf_center,
    leaf_zscore,
    positive_history,
    ppo_loss,
    process_rewards,
    value_loss,
)

F64 = torch.float64


# --- HEPO: process rewards -----------------------------------------------------------------------
def test_process_rewards_hand_example() -> None:
    """R=2 candidates, T=5 history tokens, L=2 semantic levels of 3 codes each."""
    hist = torch.tensor(
        [
            [[0, 1], [0, 2], [1, 0], [0, 1], [2, 2]],  # row 0
            [[1, 1], [1, 2], [2, 0], [1, 0], [0, 0]],  # row 1
        ]
    )
    positive = torch.tensor([[True, True, True, False, True], [True, True, False, True, False]])
    codes = torch.tensor([[0, 1, 0], [2, 0, 0]])  # (R, D = L + 1): the last is the de-dup index
    legal = [
        torch.tensor([[True, True, False], [True, True, True]]),
        torch.tensor([[True, True, False], [True, True, True]]),
    ]
    r = process_rewards(hist, positive, codes, legal, [0.1, 0.5])
    # row 0: 4 positives (t0, t1, t2, t4).
    #  level 0, code 0: P_sel = #{t0, t1} / 4 = 0.5. Mean over the 2 legal codes {0, 1}: positives
    #  with a legal level-0 code are t0, t1, t2 (t4's code 2 is not legal), 3 / 4 / 2 = 0.375.
    #  r = 0.1 * (0.5 - 0.375) = 0.0125 (had t4 counted: mean 0.5, r = 0).
    #  level 1, prefix (0, 1): P_sel = #{t0} / 4 = 0.25. Siblings under prefix 0 with a legal
    #  code: t0 (code 1); t1's code 2 is not legal: 1 / 4 / 2 = 0.125. r = 0.5 * 0.125 = 0.0625.
    # row 1: 3 positives (t0, t1, t3); level 0, code 2: P_sel = 0, mean 3 / 3 / 3 = 1/3 -> max(0,
    #  -1/3) = 0; level 1, prefix (2, 0): nothing shares the prefix: 0 - 0 = 0.
    torch.testing.assert_close(r, torch.tensor([[0.0125, 0.0625], [0.0, 0.0]]))
    # α scales each level linearly
    r2 = process_rewards(hist, positive, codes, legal, [1.0, 2.0])
    torch.testing.assert_close(r2, torch.tensor([[0.125, 0.25], [0.0, 0.0]]))


def test_process_rewards_no_positives_and_alpha_length() -> None:
    """A row without positives gets no reward; α must have one value per semantic level."""
    hist = torch.zeros(1, 2, 2, dtype=torch.long)
    none = torch.zeros(1, 2, dtype=torch.bool)
    legal = [torch.ones(1, 2, dtype=torch.bool)] * 2
    codes = torch.zeros(1, 3, dtype=torch.long)
    assert process_rewards(hist, none, codes, legal, [1.0, 1.0]).tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="process_alpha has 3 values for 2"):
        process_rewards(hist, none, codes, legal, [1.0, 1.0, 1.0])


def test_positive_history_is_strictly_before_the_prediction() -> None:
    """Positives: organic views and clicked / converted ads before the prediction position."""
    ttype = torch.tensor([[U, O, E, I, I, I, O, E, -1]])
    action = torch.tensor([[0, 0, 0, 0, 1, 2, 0, 0, 0]])
    n, t = ttype.shape
    z = torch.zeros(1, dtype=torch.long)
    b = Batch(
        ttype=ttype,
        codes=torch.arange(t * 2).reshape(1, t, 2),
        field=torch.zeros(n, t, 4, dtype=torch.long),
        action=action,
        item=torch.zeros(n, t, dtype=torch.long),
        pred_b=z,
        pred_t=torch.tensor([6]),
        targets=z[:, None],
        target_codes=torch.zeros(1, 1, 3, dtype=torch.long),
        shown_action=z,
        request=z,
        position=z,
    )
    codes, pos = positive_history(b, torch.tensor([0, 0]))
    # the O at 1, the click at 4 and the conversion at 5; not the impression at 3 nor the O at 6
    row = [False, True, False, False, True, True, False, False, False]
    assert pos.tolist() == [row, row]
    assert torch.equal(codes, b.codes[[0, 0]])


# --- HEPO: advantages and losses ----------------------------------------------------------------
def test_leaf_zscore_two_groups() -> None:
    """Population z-score within each request (groups interleaved; a constant group of an exactly
    representable 5.0 gives 0)."""
    reward = torch.tensor([1.0, 10.0, 3.0, 10.0, 40.0, 5.0, 5.0])
    group = torch.tensor([0, 1, 0, 1, 1, 2, 2])
    z = leaf_zscore(reward, group)
    # group 0: mean 2, std 1; group 1: mean 20, var (100 + 100 + 400) / 3 = 200
    s = math.sqrt(200.0)
    expected = [-1.0, -10 / s, 1.0, -10 / s, 20 / s, 0.0, 0.0]
    torch.testing.assert_close(z, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_leaf_zscore_constant_group() -> None:
    """Identical rewards carry no preference: every z-score must be 0."""
    z = leaf_zscore(torch.full((8,), 1.3), torch.zeros(8, dtype=torch.long))
    assert z.abs().max().item() < 1e-3


def test_leaf_zscore_float64() -> None:
    z = leaf_zscore(torch.tensor([1.0, 3.0], dtype=F64), torch.tensor([0, 0]))
    torch.testing.assert_close(z, torch.tensor([-1.0, 1.0], dtype=F64), rtol=1e-5, atol=1e-6)


def test_leaf_center_keeps_the_scale() -> None:
    reward = torch.tensor([1.0, 10.0, 3.0, 10.0, 40.0])
    group = torch.tensor([0, 1, 0, 1, 1])
    a = leaf_center(reward, group)  # means 2 and 20
    torch.testing.assert_close(a, torch.tensor([-1.0, -10.0, 1.0, -10.0, 20.0]))


def _bandit_optimum(leaf: Any, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A one-level policy trained with HEPO's own leaf advantage, PPO loss and KL on samples of
    itself; returns (its final probabilities, the reference's, the rewards)."""
    g = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 0.2]), 0)
    reward = torch.tensor([0.0, 0.6, 1.2, 0.9, -0.4, 0.3])
    logits = ref.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.02)
    n = 4000
    for _ in range(400):
        lp = torch.log_softmax(logits, 0)
        a = torch.multinomial(lp.exp().detach(), n, replacement=True, generator=g)
        adv = leaf(reward[a], torch.zeros(n, dtype=torch.long))[:, None]
        taken_lp = lp[a][:, None]
        pl, _ = ppo_loss(taken_lp, taken_lp.detach(), adv, 0.2, torch.ones(1))
        kl = level_kl([lp.expand(n, -1)], [ref.expand(n, -1)]).sum(1).mean()
        opt.zero_grad()
        (pl + beta * kl).backward()
        opt.step()
    return torch.softmax(logits.detach(), 0), ref.exp(), reward


def test_centred_leaf_reaches_the_kl_tilted_optimum() -> None:
    """With R minus its mean and a KL weight β, PPO on samples converges to π_ref · exp(R / β)
    (config `leaf_advantage=center`). Eq. 8's z-score does not: σ shrinks as the policy
    concentrates, so the advantages stay O(1) and the KL cannot hold it — it collapses onto the
    argmax of R."""
    beta = 0.5
    p, ref, reward = _bandit_optimum(leaf_center, beta)
    want = ref * (reward / beta).exp()
    want = want / want.sum()
    torch.testing.assert_close(p, want, atol=0.02, rtol=0)
    pz, _, _ = _bandit_optimum(leaf_zscore, beta)
    assert pz[int(reward.argmax())].item() > 0.95  # 0.997 here, against 0.436 wanted


@pytest.mark.parametrize(
    ("gamma", "lam", "adv", "ret"),
    [
        # deltas r + γ V' - V: [0.1 + 0.4 - 0.5, 0.2 + 0.3 - 0.4, 1.0 - 0.3] = [0, 0.1, 0.7]
        # λ = 1: A = the reversed cumulative sum; returns = Monte-Carlo sums of the rewards
        (1.0, 1.0, [0.8, 0.8, 0.7], [1.3, 1.2, 1.0]),
        # λ = 0: A = δ; returns = r + V(next)
        (1.0, 0.0, [0.0, 0.1, 0.7], [0.5, 0.5, 1.0]),
        # γ = 0.5: δ = [0.1 + 0.2 - 0.5, 0.2 + 0.15 - 0.4, 0.7] = [-0.2, -0.05, 0.7];
        # A2 = 0.7, A1 = -0.05 + 0.35 = 0.3, A0 = -0.2 + 0.15 = -0.05; returns discounted sums
        (0.5, 1.0, [-0.05, 0.3, 0.7], [0.45, 0.7, 1.0]),
    ],
)
def test_gae_by_hand(gamma: float, lam: float, adv: list[float], ret: list[float]) -> None:
    rewards = torch.tensor([[0.1, 0.2, 1.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.4, 0.3]], dtype=F64)
    a, r = gae(rewards, values, gamma, lam)
    torch.testing.assert_close(a, torch.tensor([adv], dtype=F64))
    torch.testing.assert_close(r, torch.tensor([ret], dtype=F64))


def test_ppo_loss_exact_with_clipping() -> None:
    """R=3 paths, D=2 levels, ε=0.2, c = (1, 0.5)."""
    ratio = torch.tensor([[1.0, 1.5], [0.5, 1.1], [0.5, 1.5]], dtype=F64)
    adv = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [1.0, -1.0]], dtype=F64)
    old = torch.tensor([[-1.0, -2.0], [-0.5, -3.0], [-2.0, -1.0]], dtype=F64)
    logp = (old + ratio.log()).requires_grad_(True)
    loss, frac = ppo_loss(logp, old, adv, 0.2, torch.tensor([1.0, 0.5], dtype=F64))
    # min(ρA, clip(ρ)A) per path: [1, min(3, 2.4)], [min(-0.5, -0.8), -2.2],
    # [min(0.5, 0.8), min(-1.5, -1.2)]
    # = [[1, 2.4], [-0.8, -2.2], [0.5, -1.5]]; level means 0.7 / 3 and -1.3 / 3
    assert loss.item() == pytest.approx(-(0.7 / 3 + 0.5 * -1.3 / 3), rel=1e-9)
    # |ρ - 1| > 0.2 for 1.5, 0.5, 0.5, 1.5 of the 6
    assert frac.item() == pytest.approx(4 / 6)
    loss.backward()
    # d/dlogp = -c_l / R * A * ρ where the unclipped term is the minimum, else 0
    grad = [[-1 / 3 * 1.0, 0.0], [0.0, -0.5 / 3 * -2.0 * 1.1], [-1 / 3 * 0.5, -0.5 / 3 * -1.5]]
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor(grad, dtype=F64))


def test_value_loss_is_mse_to_detached_returns() -> None:
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64, requires_grad=True)
    returns = torch.tensor([[0.0, 2.0], [5.0, 4.0]], dtype=F64, requires_grad=True)
    loss = value_loss(values, returns)
    assert loss.item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    loss.backward()
    assert values.grad is not None and returns.grad is None
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.0], [-1.0, 0.0]], dtype=F64))


def test_terminal_reward_value_and_log_value() -> None:
    cfg = load_config("tiny")
    stub = type("S", (), {})()
    stub.ac, stub.reward_scale = cfg.align, None
    r = Aligner.terminal_reward(stub, np.array([1.0, 3.0]))  # mean 2 -> R / 2
    torch.testing.assert_close(r, torch.tensor([0.5, 1.5]))
    Aligner.terminal_reward(stub, np.array([4.0, 4.0]))  # EMA 0.9 * 2 + 0.1 * 4 = 2.2
    assert stub.reward_scale == pytest.approx(2.2)
    stub.ac, stub.reward_scale = cfg.align.model_copy(update={"reward": "log_value"}), None
    r = Aligner.terminal_reward(stub, np.array([math.e, math.e**3]))  # log: 1, 3; mean 2
    torch.testing.assert_close(r, torch.tensor([-1.0, 1.0]))

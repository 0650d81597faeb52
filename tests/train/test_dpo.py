"""DPO: preference pairs and the loss (hard and soft labels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpr.train.dpo import dpo_loss, log_value, preference_pairs, soft_labels

F64 = torch.float64


# --- DPO ---------------------------------------------------------------------------------------
def test_preference_pairs_best_vs_worst_per_group() -> None:
    value = np.array([4.0, 1.0, 2.0, 5.0, 2.0, 7.0, 0.0, 3.0])
    group = np.array([3, 0, 1, 0, 1, 2, 3, 0])
    w, lo = preference_pairs(value, group)
    # group 0 {1: 1.0, 3: 5.0, 7: 3.0} -> (3, 1); group 1 is a tie; group 2 a single candidate;
    # group 3 {0: 4.0, 6: 0.0} -> (0, 6)
    assert w.tolist() == [3, 0] and lo.tolist() == [1, 6]
    w, lo = preference_pairs(np.zeros(0), np.zeros(0, dtype=np.int64))
    assert w.shape == (0,) and lo.shape == (0,)


def test_dpo_loss_exact() -> None:
    pi_w = torch.tensor([-1.0, -2.0, -1.0], dtype=F64)
    ref_w = torch.tensor([-2.0, -2.0, -1.0], dtype=F64)
    pi_l = torch.tensor([-3.0, -1.0, -4.0], dtype=F64)
    ref_l = torch.tensor([-2.0, -2.0, -4.0], dtype=F64)
    loss, acc = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.5)
    # margins 0.5 * ((1) - (-1)) = 1, 0.5 * (0 - 1) = -0.5, 0; -log σ(m) = log(1 + e^-m)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5)) + math.log(2.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert acc.item() == pytest.approx(1 / 3)  # a zero margin is not a correct preference


def test_dpo_soft_labels_exact() -> None:
    p = soft_labels(np.array([3.0, 1.0, 0.0]), np.array([1.0, 1.0, 2.0]))
    # v_w / (v_w + v_l); a value of 0 sits at the log floor 1e-9
    np.testing.assert_allclose(p, [0.75, 0.5, 1e-9 / (1e-9 + 2.0)], rtol=1e-9)
    assert log_value(np.array([0.0]))[0] == pytest.approx(math.log(1e-9))
    m = torch.tensor([1.0, -2.0], dtype=F64)  # margins with beta = 1
    t = torch.tensor([0.75, 0.5], dtype=F64)
    loss, _ = dpo_loss(
        m,
        torch.zeros(2, dtype=F64),
        torch.zeros(2, dtype=F64),
        torch.zeros(2, dtype=F64),
        beta=1.0,
        target=t,
    )
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = (
        -(
            0.75 * math.log(sig(1.0))
            + 0.25 * math.log(sig(-1.0))
            + 0.5 * math.log(sig(-2.0))
            + 0.5 * math.log(sig(2.0))
        )
        / 2
    )
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_soft_dpo_optimum_is_the_reference_tilted_by_value() -> None:
    """Minimising soft DPO over every pair of a 4-ad categorical policy lands on
    log π - log π_ref = log v / β + c (the product of experts the docs promise)."""
    v = torch.tensor([0.01, 0.02, 0.04, 0.005], dtype=F64)
    ref = torch.log_softmax(torch.tensor([0.5, -1.0, 0.0, 1.0], dtype=F64), 0)
    beta = 0.5
    logits = ref.clone().requires_grad_(True)
    i, j = torch.triu_indices(4, 4, 1)
    t = torch.from_numpy(soft_labels(v[i].numpy(), v[j].numpy()))
    opt = torch.optim.LBFGS([logits], max_iter=200, tolerance_grad=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        lp = torch.log_softmax(logits, 0)
        loss, _ = dpo_loss(lp[i], lp[j], ref[i], ref[j], beta, t)
        loss.backward()
        return loss

    opt.step(closure)
    tilt = torch.log_softmax(logits, 0).detach() - ref
    want = v.log() / beta
    torch.testing.assert_close(tilt - tilt.mean(), want - want.mean(), atol=1e-5, rtol=0)

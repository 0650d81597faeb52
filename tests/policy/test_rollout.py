"""Rollouts: request sets, sampling, level distributions."""

from __future__ import annotations

import copy

import numpy as np
import torch

from gpr.cascade.simulator import Simulator
from gpr.model.gpr import GPRModel
from gpr.model.journey import positions_for_split
from gpr.model.prepare import Prepared
from gpr.policy.rollout import (
    RequestContext,
    RequestSet,
    level_dists,
    level_kl,
    sample,
    split_heads,
    taken,
)

F64 = torch.float64


# --- rollouts ----------------------------------------------------------------------------------
def test_split_heads_and_request_sets() -> None:
    assert (
        split_heads(5, 2) == [3, 2] and split_heads(1, 2) == [1, 0] and split_heads(8, 4) == [2] * 4
    )
    a, b = RequestSet(np.array([3, 5])), RequestSet(np.array([7]), np.array([[1, 2, 3, 4]]))
    c = RequestSet.concat([a, b])
    assert c.pos.tolist() == [3, 5, 7] and c.env is not None
    assert c.env.tolist() == [[-1] * 4, [-1] * 4, [1, 2, 3, 4]]
    assert RequestSet.concat([a, a]).env is None
    t = c.take(np.array([2, 0]))
    assert t.pos.tolist() == [7, 3] and t.env is not None and t.env.tolist()[0] == [1, 2, 3, 4]


def test_rollout_invariants(loaded: tuple[GPRModel, Prepared], sim: Simulator) -> None:
    model, prep = loaded
    trie = prep.trie
    ctx = RequestContext(prep, sim.logs.ads, sim.logs.users)
    req = RequestSet(positions_for_split(prep.journeys, prep.pred_mask, "train")[::29][:12])
    elig = ctx.eligible(req)
    keep = elig.any(1)
    req, elig = req.take(np.nonzero(keep.numpy())[0]), elig[keep]
    n, k = len(req), 6
    assert n >= 8
    b = ctx.batch(req, model.cfg.max_len, model.cfg.thought_tokens)
    counts = trie.eligible_counts(elig)
    roll = sample(model, b, trie, counts, k, gen=torch.Generator().manual_seed(0))
    assert len(roll) == n * k
    assert np.bincount(roll.req.numpy(), minlength=n).tolist() == [k] * n
    assert np.bincount(roll.head.numpy()).tolist() == [n * 3, n * 3]  # K = 6 over 2 heads
    col = {int(item): c for c, item in enumerate(trie.items.tolist())}
    cols = torch.tensor([col[int(item)] for item in roll.item])
    assert elig[roll.req, cols].all()  # every sampled ad is eligible for its request
    assert torch.equal(trie.leaf_item[trie.walk(roll.codes)], roll.item)
    lps, legal, h = level_dists(model, b, trie, counts, roll)
    assert len(lps) == trie.depth and h.shape == (n * k, model.cfg.d_model)
    lp = taken(lps, roll.codes)
    assert lp.shape == (n * k, trie.depth)
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    for lv, (dist, ok) in enumerate(zip(lps, legal, strict=True)):
        assert torch.equal(torch.isfinite(dist), ok)
        assert ok[torch.arange(n * k), roll.codes[:, lv]].all()
        torch.testing.assert_close(torch.logsumexp(dist, 1), torch.zeros(n * k))
    # KL to an identical copy is 0; to a perturbed copy >= 0 and not 0
    same = level_kl(lps, level_dists(copy.deepcopy(model), b, trie, counts, roll)[0])
    assert same.shape == (n * k, trie.depth) and same.abs().max() < 1e-5
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.ptd.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    kl = level_kl(lps, level_dists(other, b, trie, counts, roll)[0])
    assert (kl >= -1e-6).all() and kl.sum() > 1e-2

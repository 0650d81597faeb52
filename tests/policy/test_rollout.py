"""Rollouts: request batches, sampling, level distributions."""

from __future__ import annotations

import copy

import numpy as np
import torch

from gpr.cascade.simulator import Simulator
from gpr.market.policy import ENV_FIELDS, RequestBatch
from gpr.model.gpr import GPRModel
from gpr.model.journey import positions_for_split
from gpr.model.prepare import Prepared
from gpr.policy.rollout import (
    level_dists,
    level_kl,
    sample,
    servable,
    split_heads,
    taken,
)

F64 = torch.float64


# --- rollouts ----------------------------------------------------------------------------------
def test_split_heads_and_request_batches(sim: Simulator) -> None:
    assert (
        split_heads(5, 2) == [3, 2] and split_heads(1, 2) == [1, 0] and split_heads(8, 4) == [2] * 4
    )
    logs = sim.logs
    ids = logs.journeys.request[logs.journeys.requests("train")[:3]]
    a = RequestBatch.of(ids[:2], logs.journeys, logs.ads, logs.users)
    b = RequestBatch.of(ids[2:], logs.journeys, logs.ads, logs.users).with_env(
        np.array([[1, -1, 3, 4]])
    )
    c = RequestBatch.concat([a, b])
    assert c.request_ids.tolist() == ids.tolist() and c.eligible.shape == (3, logs.ads.n)
    assert c.env[2].tolist() == [1, int(logs.journeys.slot[c.pos[2]]), 3, 4]  # -1 keeps a field
    assert c.env[0].tolist() == [int(getattr(logs.journeys, f)[c.pos[0]]) for f in ENV_FIELDS]
    t = c.take(np.array([2, 0]))
    assert t.request_ids.tolist() == [ids[2], ids[0]] and t.env[0].tolist()[0] == 1
    assert np.array_equal(t.eligible, c.eligible[[2, 0]])


def test_a_batch_environment_reaches_the_model_tokens(
    loaded: tuple[GPRModel, Prepared], sim: Simulator
) -> None:
    _, prep = loaded
    logs = sim.logs
    ids = logs.journeys.request[logs.journeys.requests("train")[:4]]
    real = RequestBatch.of(ids, logs.journeys, logs.ads, logs.users)
    plain = prep.at_requests(prep.positions(ids), 64, 0)
    same = prep.at_batch(real, 64, 0)
    assert torch.equal(plain.field, same.field)  # a logged request: its own environment
    moved = prep.at_batch(real.with_env(np.array([[2, 1, 0, 23]] * 4)), 64, 0)
    assert moved.field[moved.pred_b, moved.pred_t].tolist() == [[2, 1, 0, 23]] * 4


def test_rollout_invariants(loaded: tuple[GPRModel, Prepared], sim: Simulator) -> None:
    model, prep = loaded
    trie = prep.trie
    logs = sim.logs
    pos = positions_for_split(prep.journeys, prep.pred_mask, "train")[::29][:12]
    req = RequestBatch.of(prep.journeys.request[pos], logs.journeys, logs.ads, logs.users)
    req = servable(req)
    elig = prep.trie_eligible(req)
    n, k = len(req), 6
    assert n >= 8 and elig.any(1).all()
    b = prep.at_batch(req, model.cfg.max_len, model.cfg.thought_tokens)
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


def test_cached_sampling_draws_what_the_full_decoder_draws(
    loaded: tuple[GPRModel, Prepared], sim: Simulator
) -> None:
    """Eval-mode sampling (keys/values cached) = the teacher-forced pass with dropout off."""
    model, prep = loaded
    logs = sim.logs
    pos = positions_for_split(prep.journeys, prep.pred_mask, "train")[::31][:10]
    req = servable(RequestBatch.of(prep.journeys.request[pos], logs.journeys, logs.ads, logs.users))
    b = prep.at_batch(req, model.cfg.max_len, model.cfg.thought_tokens)
    counts = prep.trie.eligible_counts(prep.trie_eligible(req))
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0
    ref.train()
    a = sample(model, b, prep.trie, counts, 6, gen=torch.Generator().manual_seed(5))
    r = sample(ref, b, prep.trie, counts, 6, gen=torch.Generator().manual_seed(5))
    assert torch.equal(a.codes, r.codes) and torch.equal(a.item, r.item)

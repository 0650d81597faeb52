"""The simulator built from the cascade's ranking models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpr.cascade.simulator import Simulator
from gpr.core.errors import GprInputError
from gpr.market.ads import eligible_mask
from gpr.model.gpr import GPRModel
from gpr.model.journey import E
from gpr.model.prepare import Prepared

F64 = torch.float64


# --- simulator ---------------------------------------------------------------------------------
def test_simulator_scores(sim: Simulator, loaded: tuple[GPRModel, Prepared]) -> None:
    logs = sim.logs
    pos = logs.journeys.requests("train")[:5]
    rid = logs.journeys.request[pos]
    kind = logs.items.column("kind").to_numpy(zero_copy_only=False).astype(str)
    organic = int(logs.items.column("item_id").to_numpy()[kind == "organic"][0])
    ads = logs.ads.item_id[:3]
    items = np.tile([ads[0], organic, ads[1], -1, ads[2]], (5, 1))
    s = sim.score(rid, items)
    assert s.pctr.shape == s.pcvr.shape == s.value.shape == (5, 5)
    for a in (s.pctr, s.pcvr, s.value):
        assert (a[:, [1, 3]] == 0).all()  # organic item and padding are no ads
    ad = [0, 2, 4]
    assert ((s.pctr[:, ad] > 0) & (s.pctr[:, ad] < 1) & (s.pcvr[:, ad] > 0)).all()
    bid = logs.ads.bid[logs.ads.index_of(items)[:, ad]]
    np.testing.assert_allclose(s.value[:, ad], bid * s.pctr[:, ad] * s.pcvr[:, ad], rtol=1e-12)
    # env: -1 keeps every field; the request's own model-journey E fields change nothing
    keep = sim.score(rid, items, np.full((5, 4), -1))
    np.testing.assert_array_equal(keep.pctr, s.pctr)
    np.testing.assert_array_equal(keep.value, s.value)
    _, prep = loaded
    mj = prep.journeys
    e_pos = np.array([np.nonzero((mj.ttype == E) & (mj.request == r))[0][0] for r in rid])
    own = sim.score(rid, items, mj.field[e_pos, :4])
    np.testing.assert_allclose(own.pctr, s.pctr, rtol=1e-6)
    # another slot (1..5) changes pCTR
    env = np.full((5, 4), -1)
    env[:, 1] = logs.journeys.slot[pos] % 5 + 1
    moved = sim.score(rid, items, env)
    assert (moved.pctr[:, [1, 3]] == 0).all()
    assert np.abs(moved.pctr[:, ad] - s.pctr[:, ad]).max() > 1e-4
    with pytest.raises(GprInputError, match=r"\(B, K\)"):
        sim.score(rid, items[:, 0])


def test_simulator_support_is_the_retrieval_top_k(sim: Simulator) -> None:
    """support=True: exactly the retrieval's top-k of the eligible ads keep their value."""
    logs, k = sim.logs, sim.c.cfg.retrieval_k
    pos = logs.journeys.requests("train")[:4]
    rid = logs.journeys.request[pos]
    elig = eligible_mask(logs.ads, logs.users, logs.journeys.user[pos], logs.journeys.day[pos])
    assert (elig.sum(1) > k).all()  # the tiny world has more eligible ads than k
    items = np.tile(logs.ads.item_id, (4, 1))
    full, gated = sim.score(rid, items), sim.score(rid, items, support=True)
    assert full.support.all()
    # the support: k eligible ads per request (ties aside), all eligible, values kept there
    assert (gated.support.sum(1) == k).all() and not (gated.support & ~elig).any()
    np.testing.assert_array_equal(gated.value[gated.support], full.value[gated.support])
    assert (gated.value[~gated.support] == 0).all()
    np.testing.assert_array_equal(gated.pctr, full.pctr)  # only the value is gated

"""ARR: synthetic requests."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch

from gpr.cascade.simulator import Simulator
from gpr.market.ads import Users
from gpr.market.policy import RequestBatch
from gpr.model.gpr import GPRModel
from gpr.model.journey import positions_for_split
from gpr.model.prepare import Prepared
from gpr.train.arr import synthetic_requests

F64 = torch.float64


# --- ARR ---------------------------------------------------------------------------------------
def _hand_requests(pos: np.ndarray) -> RequestBatch:
    """Two users (ids 10: tier 2, 20: tier 0), five requests each at rows 0-4 and 5-9 (request id =
    row); env of row p = 10 p + (0, 1, 2, 3)."""
    day = np.zeros(10, dtype=np.int64)
    day[[3, 4]] = 1
    day[8] = 2
    env = 10 * np.arange(10)[:, None] + np.arange(4)[None, :]
    tier = np.full(21, -1)
    tier[[10, 20]] = [2, 0]
    zeros = np.zeros(21, dtype=np.int64)
    return RequestBatch(
        request_ids=pos,
        user_ids=np.where(pos < 5, 10, 20),
        days=day[pos],
        timestamps=pos * 60,
        scene=env[pos, 0],
        slot=env[pos, 1],
        device=env[pos, 2],
        hour=env[pos, 3],
        eligible=np.zeros((len(pos), 0), dtype=bool),
        pos=pos,
        journeys=cast(Any, None),  # not read
        ads=cast(Any, None),
        users=Users(zeros, zeros, zeros, tier),
    )


def test_arr_hand_example() -> None:
    """Anchors on the last `recent` requests, per_tier by tier, env from a same-day request."""
    real = _hand_requests(np.array([8, 4, 1, 3, 6]))  # 10: 1, 3, 4 (days 0, 1, 1); 20: 6, 8 (0, 2)
    out = synthetic_requests(real, (1, 2, 3), 1, np.random.default_rng(0))
    # recent = 1: user 10 (tier 2) anchors 3 times on 4, user 20 (tier 0) once on 8
    assert out.request_ids.tolist() == [4, 4, 4, 8] and out.user_ids.tolist() == [10, 10, 10, 20]
    # day 1 holds requests 3 and 4; day 2 only 8
    assert all(e.tolist() in ([30, 31, 32, 33], [40, 41, 42, 43]) for e in out.env[:3])
    assert out.env[3].tolist() == [80, 81, 82, 83]
    out = synthetic_requests(real, (1, 2, 3), 2, np.random.default_rng(0))
    assert set(out.pos[:3].tolist()) <= {3, 4} and out.pos[3] in (6, 8)
    empty = synthetic_requests(
        real.take(np.zeros(0, np.int64)), (1, 2, 3), 2, np.random.default_rng(0)
    )
    assert len(empty) == 0 and empty.env.shape == (0, 4)


def test_arr_on_tiny_world(loaded: tuple[GPRModel, Prepared], sim: Simulator) -> None:
    _, prep = loaded
    logs = sim.logs
    users = logs.users
    pos = positions_for_split(prep.journeys, prep.pred_mask, "train")
    real = RequestBatch.of(
        prep.journeys.request[pos], logs.journeys, logs.ads, users, eligibility=False
    )
    per_tier, recent = (1, 2, 3), 3
    out = synthetic_requests(real, per_tier, recent, np.random.default_rng(5))
    present = np.unique(real.user_ids)
    tier = users.activity_tier[present]
    assert set(tier.tolist()) == {0, 1, 2}  # every tier takes part
    n_of = dict(zip(*np.unique(out.user_ids, return_counts=True), strict=True))
    assert [n_of[u] for u in present] == np.asarray(per_tier)[tier].tolist()
    assert len(out) == np.asarray(per_tier)[tier].sum()
    for u in present:
        last = np.sort(real.pos[real.user_ids == u])[-recent:]
        assert np.isin(out.pos[out.user_ids == u], last).all()
    # every environment is that of a train request of the anchor's day
    same_day = {(int(d), *e.tolist()) for d, e in zip(real.days, real.env, strict=True)}
    assert all((int(d), *e.tolist()) in same_day for d, e in zip(out.days, out.env, strict=True))
    own = RequestBatch.of(out.request_ids, logs.journeys, logs.ads, users, eligibility=False)
    assert (out.env != own.env).any()  # refreshed, not the anchor's own
    again = synthetic_requests(real, per_tier, recent, np.random.default_rng(5))
    np.testing.assert_array_equal(again.pos, out.pos)
    np.testing.assert_array_equal(again.env, out.env)

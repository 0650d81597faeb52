"""ARR: synthetic requests."""

from __future__ import annotations

import numpy as np
import torch

from gpr.cascade.simulator import Simulator
from gpr.market.ads import Users
from gpr.model.gpr import GPRModel
from gpr.model.journey import E, TokenStreams, positions_for_split
from gpr.model.prepare import Prepared
from gpr.train.arr import synthetic_requests

F64 = torch.float64


# --- ARR ---------------------------------------------------------------------------------------
def _hand_journeys() -> tuple[TokenStreams, Users]:
    """Two users (ids 10: tier 2, 20: tier 0), five tokens each; field[p] = 10 p + (0, 1, 2, 3)."""
    t = 10
    day = np.zeros(t, dtype=np.int64)
    day[[3, 4]] = 1
    day[8] = 2
    j = TokenStreams(
        indptr=np.array([0, 5, 10]),
        users=np.array([10, 20]),
        ttype=np.full(t, E),
        item=np.full(t, -1),
        field=10 * np.arange(t)[:, None] + np.arange(4)[None, :],
        action=np.zeros(t, dtype=np.int64),
        day=day,
        split=np.zeros(t, dtype=np.int64),
        request=np.arange(t),
        n_user_tokens=0,
        ts=np.arange(t) * 60,
    )
    tier = np.full(21, -1)
    tier[[10, 20]] = [2, 0]
    zeros = np.zeros(21, dtype=np.int64)
    return j, Users(zeros, zeros, zeros, tier)


def test_arr_hand_example() -> None:
    """Anchors on the last `recent` requests, per_tier by tier, env from a same-day request."""
    j, users = _hand_journeys()
    pos = np.array([8, 4, 1, 3, 6])  # user 10: 1, 3, 4 (days 0, 1, 1); user 20: 6, 8 (days 0, 2)
    out = synthetic_requests(j, users, pos, (1, 2, 3), 1, np.random.default_rng(0))
    # recent = 1: user 10 (tier 2) anchors 3 times on 4, user 20 (tier 0) once on 8
    assert out.pos.tolist() == [4, 4, 4, 8]
    assert out.env is not None
    # day 1 holds requests 3 and 4; day 2 only 8
    assert all(e.tolist() in ([30, 31, 32, 33], [40, 41, 42, 43]) for e in out.env[:3])
    assert out.env[3].tolist() == [80, 81, 82, 83]
    out = synthetic_requests(j, users, pos, (1, 2, 3), 2, np.random.default_rng(0))
    assert set(out.pos[:3].tolist()) <= {3, 4} and out.pos[3] in (6, 8)
    empty = synthetic_requests(j, users, pos[:0], (1, 2, 3), 2, np.random.default_rng(0))
    assert len(empty) == 0 and empty.env is not None and empty.env.shape == (0, 4)


def test_arr_on_tiny_world(loaded: tuple[GPRModel, Prepared], sim: Simulator) -> None:
    _, prep = loaded
    j, users = prep.journeys, sim.logs.users
    pos = positions_for_split(j, prep.pred_mask, "train")
    per_tier, recent = (1, 2, 3), 3
    out = synthetic_requests(j, users, pos, per_tier, recent, np.random.default_rng(5))
    assert out.env is not None

    def user_of(p: np.ndarray) -> np.ndarray:
        return np.searchsorted(j.indptr, p, side="right") - 1

    present = np.unique(user_of(pos))
    tier = users.activity_tier[j.users[present]]
    assert set(tier.tolist()) == {0, 1, 2}  # every tier takes part
    counts = np.bincount(user_of(out.pos), minlength=j.n_users)
    assert counts[present].tolist() == np.asarray(per_tier)[tier].tolist()
    assert counts.sum() == len(out) == np.asarray(per_tier)[tier].sum()
    for u in present:
        last = np.sort(pos[user_of(pos) == u])[-recent:]
        assert np.isin(out.pos[user_of(out.pos) == u], last).all()
    # every environment is that of a train request of the anchor's day
    same_day = {(int(j.day[p]), *j.field[p, :4].tolist()) for p in pos}
    assert all(
        (int(j.day[a]), *e.tolist()) in same_day for a, e in zip(out.pos, out.env, strict=True)
    )
    assert (out.env != j.field[out.pos, :4]).any()  # refreshed, not the anchor's own
    again = synthetic_requests(j, users, pos, per_tier, recent, np.random.default_rng(5))
    assert again.env is not None
    np.testing.assert_array_equal(again.pos, out.pos)
    np.testing.assert_array_equal(again.env, out.env)

"""ARR — Anticipatory Request Rehearsal (spec §4.4): synthetic next requests for HEPO.

A synthetic request keeps a real request's user state and replaces its environment:
- U tokens reused (the window's own), O tokens = the user's most recent organic items (the
  history up to one of the user's last `arr_recent` train requests),
- E refreshed from current traffic: scene, slot, device and hour copied from a random request of
  the same day,
- more of them for active users: `arr_per_tier` (low, mid, high activity) per user and batch.
The simulator scores it like a real request (the anchor's history, the new environment).
"""

from __future__ import annotations

import numpy as np

from gpr.market.policy import RequestBatch


def synthetic_requests(
    real: RequestBatch,
    per_tier: tuple[int, int, int],
    recent: int,
    rng: np.random.Generator,
) -> RequestBatch:
    """Synthetic requests anchored on the logged requests `real` (any order)."""
    real = real.take(np.argsort(real.pos, kind="stable"))  # by user, then time
    if not len(real):
        return real
    pos, user = real.pos, real.user_ids
    cut = np.nonzero(np.diff(user))[0] + 1
    start, end = np.r_[0, cut], np.r_[cut, len(pos)]
    lo = np.maximum(start, end - recent)
    tier = np.clip(real.users.activity_tier[user[start]], 0, 2)
    n = np.asarray(per_tier, dtype=np.int64)[tier]
    g = np.repeat(np.arange(len(start)), n)
    anchor = lo[g] + (rng.random(len(g)) * (end[g] - lo[g])).astype(np.int64)
    # the environment of a random request of the same day ("current traffic")
    by_day = np.argsort(real.days, kind="stable")
    days = real.days[by_day]
    d = real.days[anchor]
    first = np.searchsorted(days, d, side="left")
    count = np.searchsorted(days, d, side="right") - first
    donor = by_day[first + (rng.random(len(anchor)) * count).astype(np.int64)]
    env = np.maximum(real.env[donor], 0)  # as the model's tokens hold it
    return real.take(anchor).with_env(env)

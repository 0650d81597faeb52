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

from gpr.market.ads import Users
from gpr.model.journey import TokenStreams
from gpr.policy.rollout import RequestSet


def synthetic_requests(
    j: TokenStreams,
    users: Users,
    positions: np.ndarray,
    per_tier: tuple[int, int, int],
    recent: int,
    rng: np.random.Generator,
) -> RequestSet:
    """Synthetic requests anchored on the real request positions `positions` (E tokens)."""
    pos = np.sort(np.asarray(positions, dtype=np.int64))
    if not len(pos):
        return RequestSet(pos, np.zeros((0, 4), np.int64))
    user = np.searchsorted(j.indptr, pos, side="right") - 1
    cut = np.nonzero(np.diff(user))[0] + 1
    start, end = np.r_[0, cut], np.r_[cut, len(pos)]
    lo = np.maximum(start, end - recent)
    tier = np.clip(users.activity_tier[j.users[user[start]]], 0, 2)
    n = np.asarray(per_tier, dtype=np.int64)[tier]
    g = np.repeat(np.arange(len(start)), n)
    anchor = pos[lo[g] + (rng.random(len(g)) * (end[g] - lo[g])).astype(np.int64)]
    # the environment of a random request of the same day ("current traffic")
    by_day = pos[np.argsort(j.day[pos], kind="stable")]
    days = j.day[by_day]
    d = j.day[anchor]
    first = np.searchsorted(days, d, side="left")
    count = np.searchsorted(days, d, side="right") - first
    donor = by_day[first + (rng.random(len(anchor)) * count).astype(np.int64)]
    return RequestSet(anchor, j.field[donor, :4].copy())

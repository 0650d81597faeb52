"""Sessions: a pause longer than SESSION_GAP_SECONDS between a user's events ends a session.

The world draws pauses inside a session as 5 s + Exp(25 s) (world/journeys.py), so 300 s splits
the sessions that a 1,800-s rule merged. The cascade's features, its topic model and HTE's session
features all use this rule (`cascade.session_gap_seconds` in the config defaults to it).
"""

from __future__ import annotations

import numpy as np

SESSION_GAP_SECONDS = 300


def in_current_session(
    row_ts: np.ndarray, idx: np.ndarray, now: np.ndarray, gap: int = SESSION_GAP_SECONDS
) -> np.ndarray:
    """(B, L) mask of the history rows `idx` (B, L; oldest first, -1 padding) that belong to the
    session current at times `now` (B,): the views after the last pause longer than `gap` seconds
    (a chain of views, each within `gap` of the next event)."""
    ok = idx >= 0
    t = np.where(ok, row_ts[np.maximum(idx, 0)], 0).astype(np.int64)
    nxt = np.concatenate([t[:, 1:], np.asarray(now, np.int64)[:, None]], 1)
    close = ok & (nxt - t <= gap)
    return np.cumprod(close[:, ::-1], axis=1)[:, ::-1].astype(bool)

"""Calibration of a generated world against WORLD.md's sketch: random vs logging vs oracle.

Scores a sample of requests with the hidden truth (budgets ignored): the mean CTR and revenue of a
random eligible ad, of the ad the logging cascade showed, and of the oracle's pick (the eligible ad
with the highest true revenue). Used by `gpr world calibrate`, docs/world.md and the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpr.market.ads import Ads, Users, eligible_mask
from gpr.world.truth import Truth


def _eligible(
    truth: Truth, items: Any, users: Any, req_user: np.ndarray, req_day: np.ndarray
) -> np.ndarray:
    """(B, A) over the world's ads (items after the organic ones), budgets ignored."""
    ads = Ads.from_items(items)
    assert ads.n == len(truth.bid) and ads.item_id[0] == truth.n_organic
    return eligible_mask(ads, Users.from_table(users), req_user, req_day)


def calibrate(root: str | Path, n_requests: int = 2000, seed: int = 0) -> dict[str, Any]:
    root = Path(root)
    truth = Truth.load(root)
    items = pq.read_table(root / "items.parquet")
    users = pq.read_table(root / "users.parquet")
    ev = pq.read_table(root / "events.parquet", columns=["token_type", "request_id", "item_id"])
    shown = ev.filter(pc.equal(ev.column("token_type"), "I"))
    rid = shown.column("request_id").to_numpy()
    ad = shown.column("item_id").to_numpy()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rid), size=min(n_requests, len(rid)), replace=False))
    rid, ad = rid[pick], ad[pick]
    elig = _eligible(truth, items, users, truth.req_user[rid], truth.req_day[rid])
    all_ads = np.arange(truth.n_organic, truth.n_organic + len(truth.bid))
    cand = np.broadcast_to(all_ads, elig.shape)
    ctr = truth.pctr(rid, cand)
    cvr = truth.pcvr(rid, cand)
    value = truth.bid[None, :] * ctr * cvr
    w = elig / np.maximum(elig.sum(axis=1, keepdims=True), 1)
    best = np.argmax(np.where(elig, value, -1.0), axis=1)
    rows = np.arange(len(rid))
    log_i = ad - truth.n_organic
    out = {
        "random": {
            "ctr": float((w * ctr).sum(1).mean()),
            "cvr": float((w * ctr * cvr).sum(1).mean() / (w * ctr).sum(1).mean()),
            "rpm": float(1000 * (w * value).sum(1).mean()),
        },
        "logging": {
            "ctr": float(ctr[rows, log_i].mean()),
            "cvr": float((ctr * cvr)[rows, log_i].mean() / ctr[rows, log_i].mean()),
            "rpm": float(1000 * value[rows, log_i].mean()),
        },
        "oracle": {
            "ctr": float(ctr[rows, best].mean()),
            "cvr": float((ctr * cvr)[rows, best].mean() / ctr[rows, best].mean()),
            "rpm": float(1000 * value[rows, best].mean()),
        },
        "n_requests": len(rid),
    }
    rpm = {p: out[p]["rpm"] for p in ("random", "logging", "oracle")}  # type: ignore[index]
    out["logging_over_oracle_rpm"] = rpm["logging"] / rpm["oracle"]
    out["logging_over_random_rpm"] = rpm["logging"] / rpm["random"]
    return out

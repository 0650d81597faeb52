"""`gpr simulate`: replay a split's requests, let a policy choose, score its choices with the truth.

Requests of the split are replayed in time order, in batches of one day. The policy ranks each batch
at once (up to M eligible ads per request); then a cheap sequential pass over the batch shows, for
each request, the first ranked ad that is still eligible and whose budget is not exhausted
(spend < budget), and adds that ad's expected revenue to its spend. So an ad overspends by at most
one impression. Budgets reset every day. A ranked ad that is not eligible is skipped (counted in
`ineligible_ranked`), never shown.

Scores are expectations under the hidden truth (WORLD.md, "How evaluation scores a policy"):
revenue = bid x pCTR x pCVR (oCPA, expected conversions billed at the bid), CTCVR = pCTR x pCVR,
GMV = pCTR x pCVR x price. The replay keeps the logged journeys: what a policy shows does not
change the user's later history (the usual offline-replay approximation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpr.core.errors import GprInputError
from gpr.core.io import write_json
from gpr.market.ads import NEW_AD_DAYS, Ads, Users, eligible_mask
from gpr.market.journeys import Journeys, LogData
from gpr.market.policy import DEFAULT_M, Policy, RequestBatch
from gpr.world.truth import Truth

TIERS = ("low", "mid", "high")


@dataclass
class SimData:
    """Everything the replay needs from a dataset directory, loaded once."""

    logs: LogData
    truth: Truth

    @classmethod
    def load(cls, root: str | Path) -> SimData:
        logs = LogData.load(root)
        truth = Truth.load(root)
        ads = logs.ads
        if ads.n != len(truth.bid) or (ads.item_id - truth.n_organic != np.arange(ads.n)).any():
            raise GprInputError("truth/ does not match items.parquet", file=Path(root) / "truth")
        return cls(logs, truth)

    @property
    def root(self) -> Path:
        return self.logs.root

    @property
    def journeys(self) -> Journeys:
        return self.logs.journeys

    @property
    def ads(self) -> Ads:
        return self.logs.ads

    @property
    def users(self) -> Users:
        return self.logs.users


@dataclass
class Replay:
    """Per replayed request: what was shown and its true response; plus budget bookkeeping."""

    request_id: np.ndarray
    user_id: np.ndarray
    day: np.ndarray
    tier: np.ndarray
    ad: np.ndarray  # shown ad item id, -1 when nothing was shown
    pctr: np.ndarray  # true, 0 when nothing was shown
    pcvr: np.ndarray
    value: np.ndarray  # bid x pCTR x pCVR
    price: np.ndarray  # product price of the shown ad
    new: np.ndarray  # the shown ad is new (age <= NEW_AD_DAYS)
    has_eligible: np.ndarray
    budget_over: float  # sum over (day, ad) of spend beyond the budget
    budget_hit: float  # sum of budgets of the (day, ad) that hit theirs
    max_over_ratio: float  # max over (day, ad) of overspend / the last impression's revenue
    ineligible_ranked: int
    seconds: float


def _batches(pos: np.ndarray, days: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive chunks of at most `size` requests that never span two days."""
    cuts = np.nonzero(days[1:] != days[:-1])[0] + 1
    out = []
    for run in np.split(pos, cuts):
        out += [run[i : i + size] for i in range(0, len(run), size)]
    return out


def replay(
    policy: Policy,
    data: SimData,
    split: str = "test",
    batch_size: int = 512,
    max_requests: int | None = None,
    m: int = DEFAULT_M,
) -> Replay:
    if batch_size < 1 or m < 1:
        raise GprInputError("batch_size and m must be >= 1", field="batch_size")
    jour, ads, truth = data.journeys, data.ads, data.truth
    pos = jour.requests(split)
    if max_requests is not None:
        pos = pos[:max_requests]
    if len(pos) == 0:
        raise GprInputError(f"no requests in split '{split}'", field="split")
    q = len(pos)
    shown = np.full(q, -1, dtype=np.int64)
    ctr, cvr, val = np.zeros(q), np.zeros(q), np.zeros(q)
    has_elig = np.zeros(q, dtype=bool)
    last_val = np.zeros(ads.n)
    spend = np.zeros(ads.n)
    over = hit = max_ratio = 0.0
    bad = 0
    day_now = None

    def close_day() -> tuple[float, float, float]:
        ex = spend >= ads.budget
        o = np.maximum(spend - ads.budget, 0.0)
        ratio = float((o[ex] / np.maximum(last_val[ex], 1e-300)).max()) if ex.any() else 0.0
        return float(o.sum()), float(ads.budget[ex].sum()), ratio

    t0 = time.perf_counter()
    done = 0
    for p in _batches(pos, jour.day[pos], batch_size):
        day = int(jour.day[p[0]])
        if day != day_now:
            if day_now is not None:
                o, h, r = close_day()
                over, hit, max_ratio = over + o, hit + h, max(max_ratio, r)
            spend[:] = 0.0
            last_val[:] = 0.0
            day_now = day
        b = len(p)
        rid = jour.request[p]
        uid = jour.user[p]
        elig = eligible_mask(ads, data.users, uid, jour.day[p], spend)
        batch = RequestBatch.at(p, jour, ads, data.users, elig, m)
        ranked = policy.rank(batch)
        cand = np.asarray(ranked.ads, dtype=np.int64)
        if cand.ndim != 2 or cand.shape[0] != b:
            raise GprInputError(
                f"policy {policy.name} returned shape {cand.shape}, expected ({b}, M)",
                field="policy",
            )
        a = ads.index_of(cand)
        ok = (a >= 0) & elig[np.arange(b)[:, None], np.maximum(a, 0)]
        bad += int(((cand >= 0) & ~ok).sum())
        safe = np.where(ok, cand, ads.item_id[0])
        t_ctr = truth.pctr(np.broadcast_to(rid[:, None], cand.shape), safe)
        t_cvr = truth.pcvr(np.broadcast_to(rid[:, None], cand.shape), safe)
        t_val = ads.bid[np.where(ok, a, 0)] * t_ctr * t_cvr
        # sequential pass: the first ranked ad with budget left; spend its expected revenue
        pick = np.full(b, -1, dtype=np.int64)
        for i in range(b):
            for j in np.nonzero(ok[i])[0]:
                k = a[i, j]
                if spend[k] < ads.budget[k]:
                    spend[k] += t_val[i, j]
                    last_val[k] = t_val[i, j]
                    pick[i] = j
                    break
        sl = slice(done, done + b)
        rows = np.nonzero(pick >= 0)[0]
        cols = pick[rows]
        shown[sl][rows] = cand[rows, cols]
        ctr[sl][rows] = t_ctr[rows, cols]
        cvr[sl][rows] = t_cvr[rows, cols]
        val[sl][rows] = t_val[rows, cols]
        has_elig[sl] = elig.any(axis=1)
        done += b
    o, h, r = close_day()
    over, hit, max_ratio = over + o, hit + h, max(max_ratio, r)
    seconds = time.perf_counter() - t0
    uid = jour.user[pos]
    a = ads.index_of(shown)
    sa = np.maximum(a, 0)
    return Replay(
        request_id=jour.request[pos],
        user_id=uid,
        day=jour.day[pos],
        tier=data.users.activity_tier[uid],
        ad=shown,
        pctr=ctr,
        pcvr=cvr,
        value=val,
        price=np.where(a >= 0, ads.price[sa], 0.0),
        new=(a >= 0) & (jour.day[pos] - ads.created_day[sa] <= NEW_AD_DAYS),
        has_eligible=has_elig,
        budget_over=over,
        budget_hit=hit,
        max_over_ratio=max_ratio,
        ineligible_ranked=bad,
        seconds=seconds,
    )


def _keys(rep: Replay, req: np.ndarray) -> dict[str, float]:
    """The business metrics over the requests selected by the boolean mask `req`."""
    n = int(req.sum())
    s = req & (rep.ad >= 0)
    ctcvr = rep.pctr * rep.pcvr
    revenue = float(rep.value[req].sum())
    gmv = float((ctcvr * rep.price)[req].sum())
    n_shown = int(s.sum())
    clicks = float(rep.pctr[s].sum())

    def div(x: float, y: float) -> float:
        return x / y if y > 0 else 0.0

    return {
        "rpm": 1000 * div(revenue, n),
        "ctr": div(clicks, n_shown),
        "cvr": div(float(ctcvr[s].sum()), clicks),
        "ctcvr": div(float(ctcvr[s].sum()), n_shown),
        "gmv_per_mille": 1000 * div(gmv, n),
        "advertiser_roi": div(gmv, revenue),
        "n_requests": n,
        "n_shown": n_shown,
        "fill_rate": div(n_shown, n),
    }


def business_metrics(rep: Replay) -> dict[str, Any]:
    """The `gpr simulate` result: overall keys, budget_overspend, and the segments."""
    everything = np.ones(len(rep.ad), dtype=bool)
    out: dict[str, Any] = _keys(rep, everything)
    out["budget_overspend"] = rep.budget_over / rep.budget_hit if rep.budget_hit > 0 else 0.0
    out["max_overspend_impressions"] = rep.max_over_ratio
    out["ineligible_ranked"] = rep.ineligible_ranked
    out["requests_with_eligible"] = int(rep.has_eligible.sum())
    shown = rep.ad >= 0
    seg: dict[str, dict[str, float]] = {}
    total_rev = float(rep.value.sum())
    for name, mask in (("new_ads", shown & rep.new), ("old_ads", shown & ~rep.new)):
        k = _keys(rep, mask)
        k["impression_share"] = int(mask.sum()) / max(int(shown.sum()), 1)
        k["revenue_share"] = float(rep.value[mask].sum()) / total_rev if total_rev > 0 else 0.0
        seg[name] = k
    for t, name in enumerate(TIERS):
        seg[f"tier_{name}"] = _keys(rep, rep.tier == t)
    out["segments"] = seg
    out["seconds"] = rep.seconds
    return out


def simulate(
    policy: Policy,
    data_dir: str | Path | SimData,
    split: str = "test",
    batch_size: int = 512,
    max_requests: int | None = None,
    m: int = DEFAULT_M,
) -> dict[str, Any]:
    """Replay `split` with `policy` and return the business metrics (see module docstring)."""
    data = data_dir if isinstance(data_dir, SimData) else SimData.load(data_dir)
    out = business_metrics(replay(policy, data, split, batch_size, max_requests, m))
    out.update(policy=policy.name, split=split, batch_size=batch_size)
    return out


def simulate_spec(
    spec: str | Path,
    data_dir: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    batch_size: int = 512,
    max_requests: int | None = None,
    seed: int = 0,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """`gpr simulate --policy SPEC --data DIR --split S --out sim.json`: load, replay, write."""
    from gpr.policy.builtins import load_policy

    data = SimData.load(data_dir)
    policy = load_policy(spec, data_dir, seed=seed, overrides=overrides)
    res = simulate(policy, data, split, batch_size, max_requests)
    res["data"] = str(data_dir)
    res["spec"] = str(spec)
    if out is not None:
        write_json(out, res)
    return res

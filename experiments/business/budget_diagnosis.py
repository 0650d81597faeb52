"""How much of GPR's gap to the cascade comes from budgets: the same replay with and without them.

    python experiments/business/budget_diagnosis.py --seed 7 --stage vaft --weights 0 0.5 \
        --split test

Reads (and loads, as it does) the runs of experiments/business/bid_serving.py:
--work/s{seed}/{stage}, --cache/cascade_s{seed}, --cache/world_s{seed}. Each policy (the cascade;
the stage served with each bid weight w) replays the split twice: with the world's daily budgets,
and with every budget infinite (each request then gets its first-ranked eligible ad). Per replay:
RPM, fill (share of requests shown an ad), distinct ads shown, the share of impressions on the 50
most shown ads, the (day, ad) pairs that exhausted their budget, and the share of revenue those
pairs took. Prints one markdown table; --jobs replays run at once (one thread each).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bid_serving import CASCADE, load_policy  # noqa: E402

from gpr.core.runtime import set_threads  # noqa: E402
from gpr.eval.simulate import SimData, business_metrics, replay  # noqa: E402


def one(job: tuple[str, str, int, str, float, str, bool]) -> dict[str, Any]:
    work, cache, seed, stage, w, split, budgets = job
    set_threads(1)
    data = SimData.load(Path(cache) / f"world_s{seed}")
    ads = data.ads
    if not budgets:  # in place: the replay and the eligibility mask read this array
        ads.budget[:] = np.inf
    t0 = time.perf_counter()
    rep = replay(load_policy(work, cache, seed, stage, w, data), data, split)
    shown = rep.ad >= 0
    a = ads.index_of(rep.ad[shown])
    n_imp = np.bincount(a, minlength=ads.n)
    days = rep.day[shown]
    pair = (days - days.min()) * ads.n + a
    spend = np.bincount(pair, weights=rep.value[shown])
    cap = np.tile(ads.budget, int(days.max() - days.min()) + 1)[: len(spend)]
    hit = spend >= cap
    return {
        "policy": stage if stage == CASCADE else f"{stage}, w = {w:g}",
        "budgets": budgets,
        "rpm": business_metrics(rep)["rpm"],
        "fill": float(shown.mean()),
        "distinct": int((n_imp > 0).sum()),
        "top50": float(np.sort(n_imp)[::-1][:50].sum() / max(n_imp.sum(), 1)),
        "exhausted": int(hit.sum()),
        "exhausted_rev": float(spend[hit].sum() / max(spend.sum(), 1e-12)),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--stage", default="vaft")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--split", default="test")
    ap.add_argument("--work", type=Path, default=Path("out/bench/stages"))
    ap.add_argument("--cache", type=Path, default=Path("out/bench"))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    pols = [(CASCADE, 0.0)] + [(args.stage, w) for w in args.weights]
    jobs = [
        (str(args.work), str(args.cache), args.seed, st, w, args.split, b)
        for st, w in pols
        for b in (True, False)
    ]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one, jobs))
    print(f"seed {args.seed}, {args.split} day(s)")
    print(
        "| policy | budgets | RPM | fill | distinct ads shown | top-50 ads' impression share "
        "| (day, ad) budgets exhausted | their revenue share | replay s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ex = f"{r['exhausted']} | {100 * r['exhausted_rev']:.1f} %" if r["budgets"] else "- | -"
        print(
            f"| {r['policy']} | {'yes' if r['budgets'] else 'none'} | {r['rpm']:.2f} "
            f"| {100 * r['fill']:.1f} % | {r['distinct']} | {100 * r['top50']:.1f} % "
            f"| {ex} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()

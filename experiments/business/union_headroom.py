"""How much value GPR's beam union holds, and how much each ranking rule picks out of it.

    python experiments/business/union_headroom.py --seeds 7 8 9 --stages vaft mtp --split valid \
        --limit 2000

For `--limit` requests of `--split` (a seeded sample), with no budgets (every targeted, active ad
eligible) and no replay: the true expected revenue (bid × pCTR × pCVR, × 1000) of the ad that
each rule puts first, averaged over the requests —
- `oracle`: the best eligible ad; `cascade`: the cascade's auction winner; `logged`: the ad the
  logs showed (0 where none was shown);
- `best in union`: the best ad among the union of the MTP heads' beams (`--beam` per head) —
  what a perfect ranker of GPR's own candidates would reach;
- `logp + w·log bid`: the union ranked by path log-probability tilted by the bid
  (`serve.score.log_bid`, experiments/business/bid_serving.py), for each w of `--grid`;
- `logp + g·log sim`: tilted by the simulator's final_value (the cascade's ranking model), for
  each g of `--sim-grid` (`bid_serving.py --judge simulator`); `sim alone` ranks by it only.
Reads the runs of experiments/stages/stages.py (--work/s{seed}/{stage}) and
--cache/{world,cascade}_s{seed}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from business import ms  # noqa: E402

from gpr.cascade.simulator import Simulator  # noqa: E402
from gpr.core.runtime import set_threads  # noqa: E402
from gpr.eval.simulate import SimData  # noqa: E402
from gpr.market.ads import eligible_mask  # noqa: E402
from gpr.market.policy import RequestBatch  # noqa: E402
from gpr.policy.builtins import Oracle
from gpr.policy.cascade import CascadePolicy  # noqa: E402
from gpr.policy.generative import GenerativePolicy
from gpr.policy.hte_features import ad_bids, bid_tilted  # noqa: E402

UNION_M = 1000  # more than any union of beams: keep every candidate


def value_of(tv: np.ndarray, batch: RequestBatch, ads: np.ndarray) -> np.ndarray:
    """True values (B,) or (B, K) of each row's ad item ids `ads` under tv (B, A); 0 for -1."""
    a = batch.ads.index_of(ads)
    rows = np.arange(len(ads)).reshape(-1, *([1] * (ads.ndim - 1)))
    return np.where(a >= 0, tv[rows, np.maximum(a, 0)], 0.0)


def seed_rows(args: argparse.Namespace, seed: int) -> dict[str, float]:
    set_threads(1)
    wdir = args.cache / f"world_s{seed}"
    data = SimData.load(wdir)
    j, ads = data.journeys, data.ads
    pos = j.requests(args.split)
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.choice(pos, size=min(args.limit, len(pos)), replace=False))
    casc = CascadePolicy(args.cache / f"cascade_s{seed}", wdir, logs=data.logs)
    gens = {
        st: GenerativePolicy(args.work / f"s{seed}" / st, wdir, beam=args.beam)
        for st in args.stages
    }
    sim = Simulator(args.cache / f"cascade_s{seed}", wdir, logs=data.logs)
    oracle = Oracle(data.truth)
    sums: dict[str, float] = {}

    def add(name: str, v: np.ndarray) -> None:
        sums[name] = sums.get(name, 0.0) + float(v.sum())

    for lo in range(0, len(pos), 256):
        p = pos[lo : lo + 256]
        elig = eligible_mask(ads, data.users, j.user[p], j.day[p], np.zeros(ads.n))
        batch = RequestBatch.at(p, j, ads, data.users, elig, UNION_M)
        tv = np.where(elig, oracle.true_values(batch), 0.0)
        add("oracle", tv.max(axis=1))
        add("cascade", value_of(tv, batch, casc.rank(batch).ads[:, 0]))
        row = j.shown(batch.request_ids)
        add("logged", value_of(tv, batch, np.where(row >= 0, j.item[np.maximum(row, 0)], -1)))
        for st, pol in gens.items():
            r = pol.rank(batch)
            items = torch.from_numpy(r.ads)
            logp = torch.from_numpy(np.nan_to_num(r.values, nan=-np.inf)).float()
            add(f"{st}: best in union", value_of(tv, batch, r.ads).max(axis=1))
            add(f"{st}: union size", (r.ads >= 0).sum(axis=1))
            for w in args.grid:
                top, _ = bid_tilted(items, logp, ad_bids(items, ads), w)
                add(f"{st}: logp + {w:g}·log bid", value_of(tv, batch, top[:, 0].numpy()))
            sv = torch.from_numpy(sim.score(batch.request_ids, np.maximum(r.ads, 0)).value)
            for g in args.sim_grid:
                top, _ = bid_tilted(items, logp, sv.float(), g)
                add(f"{st}: logp + {g:g}·log sim", value_of(tv, batch, top[:, 0].numpy()))
            top, _ = bid_tilted(items, torch.where(items >= 0, 0.0, -torch.inf), sv.float(), 1.0)
            add(f"{st}: sim alone", value_of(tv, batch, top[:, 0].numpy()))
    n = len(pos)
    out = {k: (v / n if "size" in k else 1000 * v / n) for k, v in sums.items()}
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in out.items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--stages", nargs="+", default=["vaft", "mtp"])
    ap.add_argument("--split", choices=["valid", "test"], default="valid")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--grid", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--sim-grid", type=float, nargs="*", default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--work", type=Path, default=Path("out/bench/stages"))
    ap.add_argument("--cache", type=Path, default=Path("out/bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    res = {s: seed_rows(args, s) for s in args.seeds}
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    seeds = " ".join(map(str, args.seeds))
    print(
        f"\n`python experiments/business/union_headroom.py --seeds {seeds} "
        f"--stages {' '.join(args.stages)} "
        f"--split {args.split} --limit {args.limit} --beam {args.beam} "
        f"--sim-grid {' '.join(f'{g:g}' for g in args.sim_grid)}` — {platform.machine()}; "
        f"commit {commit}; {datetime.date.today()}. True revenue per 1000 requests of the "
        "first-ranked ad, no budgets; mean ± std over seeds.\n"
    )
    print("| rule | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± std |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for k in res[args.seeds[0]]:
        v = [res[s][k] for s in args.seeds]
        print(f"| {k} | " + " | ".join(f"{x:.2f}" for x in v) + f" | {ms(v)} |")


if __name__ == "__main__":
    main()

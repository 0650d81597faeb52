"""Where the RL simulator and the truth disagree (issue 6's diagnosis), on one seed's world.

    python experiments/stages/simulator_gap.py --seed 7 [--runs out/bench/stages/s7/vaft ...]

1. Calibration of the simulator (the cascade's ranking models) against the hidden truth on the
   valid day's *logged* impressions, and on 40 *random eligible* ads per request (never shown by
   the logs), overall and for the simulator's argmax among those 40.
2. For each run in --runs: the simulator's and the truth's value of the policy's top beam-search
   ad (beam 20 per head, no budgets) on 600 valid requests — what alignment optimises vs what the
   replay pays; with --reference, the share of requests whose top ad lies inside the
   reference run's beam union (the pool where `align.candidate_pool` trains).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpr.cascade.simulator import Simulator
from gpr.core.runtime import set_threads
from gpr.market.ads import eligible_mask
from gpr.market.policy import RequestBatch
from gpr.model.gpr import GPRModel
from gpr.model.journey import positions_for_split
from gpr.model.registry import load_run
from gpr.policy.rollout import servable
from gpr.world.truth import Truth


def calibration(sim: Simulator, truth: Truth, rng: np.random.Generator, n: int = 600) -> None:
    j = sim.logs.journeys
    rows = np.sort(rng.choice(j.impressions("valid"), 4 * n, replace=False))
    req, item = j.request[rows], j.item[rows]
    s = sim.score(req, item[:, None])
    true = truth.value(req, item)
    print("| ads | simulator value | true value | ratio |\n|---|---|---|---|")
    print(
        f"| logged impressions | {s.value.mean():.4f} | {true.mean():.4f} | "
        f"{s.value.mean() / true.mean():.2f} |"
    )
    req = req[:n]
    pos = j.positions(req)
    elig = eligible_mask(sim.logs.ads, sim.logs.users, j.user[pos], j.day[pos])
    cand = np.stack([rng.choice(np.nonzero(e)[0], 40) for e in elig])
    items = sim.logs.ads.item_id[cand]
    s = sim.score(req, items, support=True)
    true = truth.value(np.repeat(req[:, None], 40, 1), items)
    r, top = np.arange(n), s.value.argmax(1)
    full = sim.score(req, items).value
    inside = s.support
    for name, sv, tv in (
        ("40 random eligible per request", full, true),
        ("  of them inside the retrieval top-k", full[inside], true[inside]),
        ("  of them outside it", full[~inside], true[~inside]),
        ("the simulator's argmax of the 40 (inside top-k)", s.value[r, top], true[r, top]),
        ("the true argmax of the 40", None, true.max(1)),
    ):
        sm = f"{sv.mean():.4f}" if sv is not None else ""
        ratio = f"{sv.mean() / tv.mean():.2f}" if sv is not None else ""
        print(f"| {name} | {sm} | {tv.mean():.4f} | {ratio} |")
    # what the argmax over-rates: its bid, pCTR and pCVR against the truth
    best = items[r, top]
    bid = sim.logs.ads.bid[cand]
    print(
        f"\nargmax: bid / mean bid of the 40 {bid[r, top].mean() / bid.mean():.2f}; "
        f"pCTR simulator / true {s.pctr[r, top].mean() / truth.pctr(req, best).mean():.2f}; "
        f"pCVR simulator / true {s.pcvr[r, top].mean() / truth.pcvr(req, best).mean():.2f}"
    )


@dataclass
class Top:
    """Means over the requests of the top ad's simulator and true value, log bid and true pCTR x
    pCVR (values x1000)."""

    sim: float
    truth: float
    log_bid: float
    true_ctcvr: float


@torch.no_grad()
def top1(run: Path, sim: Simulator, truth: Truth, n: int = 600) -> tuple[Top, list[np.ndarray]]:
    """The run's top beam ad on n valid requests (`Top`), and its beam union per block of
    requests (items (B, U), -1 padded)."""
    model, prep, _ = load_run(run)
    assert isinstance(model, GPRModel)
    model.eval()
    logs = sim.logs
    pos = positions_for_split(prep.journeys, prep.pred_mask, "valid")
    pos = np.sort(np.random.default_rng(0).choice(pos, min(n, len(pos)), replace=False))
    tv, sv, unions, bids, ctcvr = [], [], [], [], []
    for lo in range(0, len(pos), 100):
        ids = prep.journeys.request[pos[lo : lo + 100]]
        req = servable(RequestBatch.of(ids, logs.journeys, logs.ads, logs.users))
        b = prep.at_batch(req, model.cfg.max_len, model.cfg.thought_tokens)
        items, _ = model.generate(b, prep.trie, 20, prep.trie_eligible(req))
        best, rid = items[:, 0].numpy(), req.request_ids
        tv.append(truth.value(rid, best))
        sv.append(sim.score(rid, best[:, None]).value[:, 0])
        unions.append(items.numpy())
        bids.append(np.log(sim.logs.ads.bid[sim.logs.ads.index_of(best)]))
        ctcvr.append(truth.pctr(rid, best) * truth.pcvr(rid, best))
    top = Top(
        1000 * float(np.concatenate(sv).mean()),
        1000 * float(np.concatenate(tv).mean()),
        float(np.concatenate(bids).mean()),
        1000 * float(np.concatenate(ctcvr).mean()),
    )
    return top, unions


def share_inside(unions: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """Share of the requests whose top ad is inside the reference run's beam union."""
    hits = [(u[:, :1] == r).any(1) for u, r in zip(unions, ref, strict=True)]
    return float(np.concatenate(hits).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cache", type=Path, default=Path("out/bench"))
    ap.add_argument("--runs", type=Path, nargs="*", default=[])
    ap.add_argument("--reference", type=Path, default=None, help="e.g. the init of the runs")
    args = ap.parse_args()
    set_threads(1)
    world = args.cache / f"world_s{args.seed}"
    sim = Simulator(args.cache / f"cascade_s{args.seed}", world)
    truth = Truth.load(world)
    calibration(sim, truth, np.random.default_rng(0))
    wanted = [r for r in dict.fromkeys([*args.runs, args.reference]) if r is not None]
    done = {run: top1(run, sim, truth) for run in wanted}  # the reference once, even if in --runs
    ref = done[args.reference][1] if args.reference else None
    if args.runs:
        print("\n| run | simulator value of the top ad (x1000) | true value (x1000) ", end="")
        print("| its log bid | its true pCTR x pCVR (x1000) |", end="")
        print(" top ad inside the reference's union |" if ref else "")
        print("|---|---|---|---|---|" + ("---|" if ref else ""))
        for run in args.runs:
            t, unions = done[run]
            inside = f" {share_inside(unions, ref):.3f} |" if ref else ""
            row = f"| {run} | {t.sim:.2f} | {t.truth:.2f} | {t.log_bid:.3f} | {t.true_ctcvr:.3f} |"
            print(row + inside, flush=True)


if __name__ == "__main__":
    main()

"""Bid-aware serving of GPR runs: rank the beam union by log p(ad) + w · log(bid), w tuned on valid.

    python experiments/business/bid_serving.py --seeds 7 8 9 --stages vaft mtp --grid 0 0.25 0.5 1
    python experiments/business/bid_serving.py --seeds 7 8 --stages vaft dpo_soft \
        --judge simulator --grid 0 4

`--judge simulator` tilts by log(final_value) of the seed's simulator (the cascade's frozen
ranking model: bid × pCTR × pCVR) instead of log bid: the union ranked by p(ad) · value^w, the
product of the imitation prior and the copied ranking model — a diagnostic of what alignment
against that simulator could distill into the policy, not GPR serving on its own. `--judge hte`
tilts by log(bid × HTE pCTR × HTE pCVR) (`serve.score.log_hte_value`): the same product with
GPR's own value heads, e.g. after `gpr train --stage hte` distilled the simulator into them.
A stage that is not one of stages.py's (e.g. an aligned variant) must already exist in
--work/s{seed}/{stage}.

Reads the stage runs of experiments/stages/stages.py (--work/s{seed}/{stage}) and the cascades
(--cache/cascade_s{seed}), training the missing ones first (small preset, as stages.py does).
The first of --stages is tuned: every w of --grid is replayed on each seed's *valid* day and
the w with the highest mean valid RPM is kept (one w for all seeds). Then every stage is
replayed on the test day with w = 0 and that w, next to the cascade. Replays are cached per
seed in --work/s{seed}/bid_serving.json; --jobs processes run at once (one thread each).
Writes --out (docs/results/bid_serving.md) with the command, machine, commit and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))  # the sibling experiment
from business import ms, pct, world  # noqa: E402
from stages import STAGES, train_stages  # noqa: E402

from gpr.cascade.simulator import Simulator  # noqa: E402
from gpr.core.config import load_config  # noqa: E402
from gpr.core.runtime import set_threads  # noqa: E402
from gpr.eval.simulate import SimData, simulate  # noqa: E402
from gpr.market.policy import Ranked, RequestBatch  # noqa: E402
from gpr.policy.cascade import CascadePolicy  # noqa: E402
from gpr.policy.generative import GenerativePolicy
from gpr.policy.hte_features import bid_tilted  # noqa: E402

CASCADE = "cascade"
KEYS = ("rpm", "ctr", "ctcvr", "gmv_per_mille")


JUDGES = ("bid", "simulator", "hte")
UNION_M = 1000  # more than any union of beams: the judge re-ranks every candidate


def key(stage: str, split: str, w: float, judge: str = "bid") -> str:
    base = f"{stage}|{split}|{w:g}"
    return base if judge == "bid" or w == 0 or stage == CASCADE else f"{base}|{judge}"


class SimulatorJudged:
    """A generative policy whose whole beam union is re-ranked by log p + w · log final_value."""

    def __init__(self, pol: GenerativePolicy, sim: Simulator, w: float) -> None:
        self.pol, self.sim, self.w = pol, sim, w
        self.name = f"{pol.name}+sim{w:g}"

    def rank(self, batch: RequestBatch) -> Ranked:
        r = self.pol.rank(dataclasses.replace(batch, m=UNION_M))
        items = torch.from_numpy(r.ads)
        logp = torch.from_numpy(np.nan_to_num(r.values, nan=-np.inf)).float()
        value = self.sim.score(batch.request_ids, np.maximum(r.ads, 0)).value
        top, score = bid_tilted(items, logp, torch.from_numpy(value).float(), self.w)
        ads = top[:, : batch.m].numpy()
        return Ranked(ads, np.where(ads >= 0, score[:, : batch.m].numpy(), np.nan))


def load_policy(
    work: str, cache: str, seed: int, stage: str, w: float, data: SimData, judge: str = "bid"
) -> Any:
    """The seed's cascade, or its `stage` run served with weight w on log bid or on the log
    simulator value (beam 20 per head)."""
    wdir = Path(cache) / f"world_s{seed}"
    casc = Path(cache) / f"cascade_s{seed}"
    if stage == CASCADE:
        return CascadePolicy(casc, wdir, logs=data.logs)
    run = Path(work) / f"s{seed}" / stage
    if judge == "simulator" and w:
        pol = GenerativePolicy(run, wdir, beam=20)
        return SimulatorJudged(pol, Simulator(casc, wdir, logs=data.logs), w)
    term = "log_hte_value" if judge == "hte" else "log_bid"
    return GenerativePolicy(run, wdir, beam=20, overrides=[f"serve.score.{term}={w}"])


Job = tuple[str, str, str, float, int, str, str]


def replay(job: Job) -> tuple[str, dict[str, Any]]:
    """One replay in a worker process: (work, cache, stage, w, seed, split, judge) -> (key,
    metrics)."""
    work, cache, stage, w, seed, split, judge = job
    set_threads(1)
    data = SimData.load(Path(cache) / f"world_s{seed}")
    t0 = time.perf_counter()
    pol = load_policy(work, cache, seed, stage, w, data, judge)
    res = simulate(pol, data, split)
    res["wall_seconds"] = time.perf_counter() - t0
    return key(stage, split, w, judge), res


def prepare(job: tuple[str, str, int, str]) -> int:
    """Build (or reuse) one seed's world, SIDs, cascade and stage runs up to `upto`."""
    work, cache, seed, upto = job
    cfg = load_config("small", seed=seed)
    wdir = world("small", seed, Path(cache))
    train_stages(cfg, wdir, Path(work) / f"s{seed}", Path(cache), seed, upto)
    return seed


def run_jobs(args: argparse.Namespace, jobs: list[tuple[int, str, str, float]]) -> None:
    """Run the (seed, stage, split, w) replays not yet cached; cache each as it finishes."""
    cache = {s: load(args, s) for s in args.seeds}
    todo: list[Job] = [
        (str(args.work), str(args.cache), st, w, s, sp, args.judge) for s, st, sp, w in jobs
    ]
    todo = [j for j in todo if key(j[2], j[5], j[3], j[6]) not in cache[j[4]]]
    with ProcessPoolExecutor(args.jobs) as pool:
        for job, (k, res) in zip(todo, pool.map(replay, todo), strict=True):
            seed = job[4]
            cache[seed][k] = res
            path = args.work / f"s{seed}" / "bid_serving.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache[seed], indent=1, default=float))
            tmp.replace(path)
            rpm, secs = res["rpm"], res["wall_seconds"]
            print(f"seed {seed} {k}: rpm {rpm:.2f} ({secs:.0f} s)", flush=True)


def load(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    path = args.work / f"s{seed}" / "bid_serving.json"
    return json.loads(path.read_text()) if path.exists() else {}


def report(args: argparse.Namespace, best: float) -> str:
    res = {s: load(args, s) for s in args.seeds}
    tune = args.stages[0]
    lines = [f"## Tuning w on the valid day ({tune})", ""]
    lines += ["| w | " + " | ".join(f"RPM seed {s}" for s in args.seeds) + " | mean |"]
    lines += ["|---|" + "---|" * (len(args.seeds) + 1)]
    for w in args.grid:
        v = [res[s][key(tune, "valid", w, args.judge)]["rpm"] for s in args.seeds]
        lines += [f"| {w:g} | " + " | ".join(f"{x:.2f}" for x in v) + f" | {np.mean(v):.2f} |"]
    c = [res[s][key(CASCADE, "valid", 0)]["rpm"] for s in args.seeds]
    lines += ["| cascade | " + " | ".join(f"{x:.2f}" for x in c) + f" | {np.mean(c):.2f} |"]
    lines += ["", f"Kept: w = {best:g}.", "", "## Test day", ""]
    lines += ["| policy | RPM | CTR | CTCVR | GMV / mille | RPM vs cascade | CTCVR vs cascade |"]
    lines += ["|---|---|---|---|---|---|---|"]
    casc = {k: [res[s][key(CASCADE, "test", 0)][k] for s in args.seeds] for k in KEYS}
    rows = [(CASCADE, 0.0)] + [(st, w) for st in args.stages for w in sorted({0.0, best})]
    per_seed = []
    for st, w in rows:
        m = {k: [res[s][key(st, "test", w, args.judge)][k] for s in args.seeds] for k in KEYS}
        rel = {k: [a / b - 1 for a, b in zip(m[k], casc[k], strict=True)] for k in ("rpm", "ctcvr")}
        name = CASCADE if st == CASCADE else f"{st}, w = {w:g}"
        vs = "" if st == CASCADE else f"{pct(rel['rpm'], 1)} | {pct(rel['ctcvr'], 1)}"
        lines += [
            f"| {name} | {ms(m['rpm'])} | {pct(m['ctr'])} | {pct(m['ctcvr'], 3)} "
            f"| {ms(m['gmv_per_mille'], '{:.1f}')} | {vs or ' | '} |"
        ]
        per_seed.append((name, m["rpm"]))
    lines += ["", "RPM per seed:", ""]
    lines += ["| policy | " + " | ".join(f"{s}" for s in args.seeds) + " |"]
    lines += ["|---|" + "---|" * len(args.seeds)]
    lines += [f"| {n} | " + " | ".join(f"{x:.2f}" for x in v) + " |" for n, v in per_seed]
    lines += ["", "## Segments (test day)", ""]
    lines += [
        "| policy | RPM new ads | RPM old ads | RPM low tier | RPM mid tier | RPM high tier |"
    ]
    lines += ["|---|---|---|---|---|---|"]
    for st, w in rows:
        seg = [res[s][key(st, "test", w, args.judge)]["segments"] for s in args.seeds]
        cells = [ms([g["new_ads"]["rpm"] for g in seg]), ms([g["old_ads"]["rpm"] for g in seg])]
        cells += [ms([g[f"tier_{t}"]["rpm"] for g in seg]) for t in ("low", "mid", "high")]
        name = CASCADE if st == CASCADE else f"{st}, w = {w:g}"
        lines += [f"| {name} | " + " | ".join(cells) + " |"]
    secs = [r["wall_seconds"] for s in args.seeds for k, r in res[s].items() if k[0] != "c"]
    lines += [
        "",
        f"Wall time per generative replay: {ms(secs, '{:.0f}')} s (as cached: each replay ran "
        "with the --jobs and machine load of the run that made it).",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--stages", nargs="+", default=["vaft", "mtp"])
    ap.add_argument("--grid", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    ap.add_argument("--work", type=Path, default=Path("out/bench/stages"))
    ap.add_argument("--cache", type=Path, default=Path("out/bench"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--judge", choices=JUDGES, default="bid", help="what w weighs the log of")
    ap.add_argument("--out", type=Path, default=Path("docs/results/bid_serving.md"))
    args = ap.parse_args()
    if 0.0 not in args.grid:
        args.grid = [0.0, *args.grid]
    t0 = time.time()
    tune = args.stages[0]
    upto = max((s for s in args.stages if s in STAGES), key=STAGES.index, default="mtp")
    with ProcessPoolExecutor(args.jobs) as pool:
        preps = [(str(args.work), str(args.cache), s, upto) for s in args.seeds]
        for seed in pool.map(prepare, preps):
            print(f"seed {seed}: runs ready", flush=True)
    jobs = [(s, CASCADE, "valid", 0.0) for s in args.seeds]
    jobs += [(s, tune, "valid", w) for s in args.seeds for w in args.grid]
    run_jobs(args, jobs)
    res = {s: load(args, s) for s in args.seeds}
    mean = [
        np.mean([res[s][key(tune, "valid", w, args.judge)]["rpm"] for s in args.seeds])
        for w in args.grid
    ]
    best = args.grid[int(np.argmax(mean))]
    jobs = [(s, CASCADE, "test", 0.0) for s in args.seeds]
    jobs += [(s, st, "test", w) for s in args.seeds for st in args.stages for w in {0.0, best}]
    run_jobs(args, jobs)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    seeds = " ".join(map(str, args.seeds))
    grid = " ".join(f"{w:g}" for w in args.grid)
    term = {"bid": "bid", "simulator": "simulator final_value", "hte": "HTE value"}[args.judge]
    head = (
        f"# Bid-aware serving: log p(ad) + w · log({term})\n\n"
        f"`python experiments/business/bid_serving.py --seeds {seeds} "
        f"--stages {' '.join(args.stages)} --grid {grid} --judge {args.judge}` — "
        f"small world, seeds {seeds}; "
        f"{platform.machine()}, 2 cores; commit {commit}; {datetime.date.today()}; "
        f"{time.time() - t0:.0f} s (cached replays are not re-run). Mean ± std over seeds.\n\n"
    )
    text = head + report(args, best) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

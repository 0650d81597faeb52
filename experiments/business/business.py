"""The business benchmark: random / logging / cascade / GPR / oracle on the small world, 3 seeds.

    python experiments/business/business.py [--preset small] [--seeds 7 8 9]
        [--gpr 'out/gpr_s{seed}' [--gpr-serve serve.score.log_hte_value=2 ...]]

For each seed: generate the world (cached in --cache/world_s{seed}, reused when present), train the
cascade (--cache/cascade_s{seed}), replay the test day with every policy under the hidden truth
(`gpr.eval.simulate`), and evaluate the cascade's ranking AUC. Prints markdown tables (mean ± std
over seeds) and writes them to --out (docs/results/business.md) with the command, machine, commit
and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpr.cascade.config import cascade_config
from gpr.cascade.train import evaluate_ranking, train_cascade
from gpr.core.config import load_config
from gpr.core.metrics import auc
from gpr.eval.simulate import SimData, simulate
from gpr.market.policy import Policy
from gpr.policy.builtins import Logging, Oracle, RandomEligible, load_policy
from gpr.policy.cascade import CascadePolicy
from gpr.world import generate_world

KEYS = (
    "rpm",
    "ctr",
    "cvr",
    "ctcvr",
    "gmv_per_mille",
    "advertiser_roi",
    "fill_rate",
    "budget_overspend",
)
POLICIES = ("random-eligible", "logging", "cascade", "gpr", "oracle")

NOTES = """## How these numbers are made

- **Replay** (`gpr.eval.simulate`): every test-day request in time order, in batches of 512; the
  policy ranks up to 16 eligible ads per request (targeting admits the user, ad active that day,
  budget left); the first ranked ad whose budget is not exhausted is shown. Scores are expectations
  under the hidden truth: revenue = bid × pCTR × pCVR, CTCVR = pCTR × pCVR, GMV = CTCVR × price.
  RPM = 1000 × revenue per request (requests with nothing shown count 0). Spend against the daily
  budgets is that same expected revenue, so an ad overspends by at most one impression (budget
  overspend = spend beyond budgets / budgets of the ads that hit theirs). The logged journeys are
  kept: what a policy shows does not change later history (the usual offline-replay approximation).
- **random-eligible**: a uniformly random eligible ad. **logging**: the ad the logs showed, if
  still eligible, else nothing. The logs' cascade was budgeted on *realised* conversions (rare), the
  replay budgets on *expected* revenue, so in the replay many logged ads are out of budget and the
  logging policy's fill rate drops; the reference row scores the logged choices with no budget cap.
  **oracle**: the eligible ad of highest true revenue (greedy; an upper bound in practice).
- **cascade** (`gpr.cascade`): two-tower retrieval (in-batch softmax with logQ correction,
  exact top-200 over the eligible ads) → ranking (Wide & Deep, DIN-style target attention, pCTR and
  pCVR heads, ESMM + clicked-CVR loss, trained stage-wise, early-stopped on the valid day's AUC) →
  eCPM auction (bid × pCTR × pCVR × 1000, generalised second price). Trained on the train days'
  logged impressions only; never reads the truth. What made it competitive (seed 8, RPM 26.7 →
  38.8): the wide part with its head biases started at the base rates (the pCVR price slope was
  −0.2 instead of the logs' −0.75, so the auction bought expensive, rarely converting ads), a proxy
  of the user's price sensitivity (the price level of the ads the logs showed the user: correlation
  −0.84 with the hidden sensitivity) and logged ad statistics of earlier days (impressions per day,
  smoothed CTR / CVR: the logging cascade showed good ads more; plus days of data, so that a new
  ad is not mistaken for an old one the logs never showed). Then (2026-12-06, RPM +14 %, AUC
  +0.0125): the session-topic features (`cascade.session_topics`,
  `src/gpr/cascade/topics.py`), an EM mixture fitted on the train days' organic sessions
  that turns the subtopics a session has viewed into a posterior over its intent subtopic, with
  the user's earlier sessions as prior. Then (2026-12-07, RPM +2.9 %, AUC +0.0053): that prior
  forgets (earlier sessions' evidence halves every 2 days: interests drift) and leans less on
  the global shares (`cascade.topic_half_life_days`, `cascade.topic_prior_strength`); and
  (2026-12-07, AUC +0.0038) sessions end at a pause > 300 s instead of 1,800 s
  (`cascade.session_gap_seconds`), which had merged one in seven pairs of sessions.
- **Ranking AUC ceiling.** The truth column scores the test impressions with the *true* pCTR: no
  model can beat it. The world's click signal is dominated by the hidden session intent, which the
  organic views of the session reveal only partly (the intent subtopic gets ~20 % of a session's
  views), so an AUC of 0.70 is within ~0.03 of the ceiling. While developing, a logistic regression
  on hand-made session / profile match features reached 0.685 on seed 7's test day, and the truth
  restricted to the session term 0.715: what is left is what the logs cannot reveal.
- **Reading the table honestly.** The cascade beats the logging policy in the replay largely on
  fill: it always has an in-budget ad to show, while the logged ad is often out of (expected-spend)
  budget. Per shown ad it is worse: lower CVR and CTCVR than the logging cascade, which ranks with
  the true response minus the session term; compare it with the reference row. It also shows new
  ads about half as often as the oracle does (content features carry them, but the logged-ad
  statistics favour ads with a track record). These are the gaps a generative model can close.
"""


def world(preset: str, seed: int, cache: Path) -> Path:
    out = cache / f"world_s{seed}"
    if not (out / "manifest.json").exists():
        cfg = load_config(preset, seed=seed)
        generate_world(cfg.world, cfg.seed, out, preset)
    return out


def logged_value_rpm(data: SimData) -> float:
    """RPM of the logged choices scored by the truth with no budget cap (a reference only)."""
    j = data.journeys
    pos = j.requests("test")
    row = j.shown(j.request[pos])
    ok = row >= 0
    v = data.truth.value(j.request[pos][ok], j.item[row[ok]])
    return float(1000 * v.sum() / len(pos))


def truth_auc(data: SimData) -> float:
    """AUC of the true pCTR on the test impressions: the ceiling of any ranking model's AUC."""
    j = data.journeys
    rows = j.impressions("test")
    p = data.truth.pctr(j.request[rows], j.item[rows])
    return auc(j.action[rows] >= 1, p)


def _override(text: str) -> tuple[str, Any]:
    """'field=value' (value as JSON when it parses, else a string) for the cascade config."""
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--cascade expects field=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    wdir = world(args.preset, seed, args.cache)
    gen_s = time.perf_counter() - t0
    data = SimData.load(wdir)
    run = args.cache / f"cascade_s{seed}"
    t0 = time.perf_counter()
    cfg = cascade_config(args.preset, **dict(_override(x) for x in args.cascade))
    meta = train_cascade(wdir, cfg, seed, run, logs=data.logs)
    train_s = time.perf_counter() - t0
    policies: dict[str, Policy] = {
        "random-eligible": RandomEligible(seed),
        "logging": Logging(),
        "cascade": CascadePolicy(run, wdir, logs=data.logs),
        "oracle": Oracle(data.truth),
    }
    if args.gpr:
        policies["gpr"] = load_policy(args.gpr.format(seed=seed), wdir, overrides=args.gpr_serve)
    sims = {}
    for name, pol in policies.items():
        sims[name] = simulate(pol, data)
        print(
            f"seed {seed} {name}: rpm {sims[name]['rpm']:.2f} in {sims[name]['seconds']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return {
        "seed": seed,
        "sim": sims,
        "ranking": evaluate_ranking(run, wdir, "test", logs=data.logs),
        "retrieval": meta["metrics"]["retrieval"],
        "ranking_valid": {k: v for k, v in meta["metrics"]["ranking"].items()},
        "truth_auc_ctr": truth_auc(data),
        "logged_rpm_no_budget": logged_value_rpm(data),
        "train_seconds": train_s,
        "world_seconds": gen_s,
    }


def ms(values: list[float], fmt: str = "{:.2f}") -> str:
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1))}"


def pct(values: list[float], digits: int = 2) -> str:
    return ms([100 * x for x in values], "{:." + str(digits) + "f}") + " %"


def report(args: argparse.Namespace, res: list[dict[str, Any]]) -> str:
    names = [p for p in POLICIES if all(p in r["sim"] for r in res)]
    lines = []
    head = (
        "| policy | RPM | CTR | CVR | CTCVR | GMV / mille | advertiser ROI | fill "
        "| budget overspend |"
    )
    lines += [head, "|---|" + "---|" * 8]
    for p in names:
        s = [r["sim"][p] for r in res]
        lines.append(
            f"| {p} | {ms([x['rpm'] for x in s])} | {pct([x['ctr'] for x in s])} | "
            f"{pct([x['cvr'] for x in s])} | {pct([x['ctcvr'] for x in s], 3)} | "
            f"{ms([x['gmv_per_mille'] for x in s], '{:.1f}')} | "
            f"{ms([x['advertiser_roi'] for x in s])} | {pct([x['fill_rate'] for x in s], 1)} | "
            f"{pct([x['budget_overspend'] for x in s], 1)} |"
        )
    if "gpr" not in names:
        lines.append("| GPR | pending (issue 4) | | | | | | | |")
    lines.append(
        f"| *logged choices, no budget cap (reference)* | "
        f"{ms([r['logged_rpm_no_budget'] for r in res])} | | | | | | | |"
    )
    table = "\n".join(lines)

    def ratio(a: str, b: str) -> list[float]:
        return [r["sim"][a]["rpm"] / r["sim"][b]["rpm"] for r in res]

    ratios = (
        f"cascade / random-eligible RPM: {ms(ratio('cascade', 'random-eligible'))}×; "
        f"cascade / logging: {ms(ratio('cascade', 'logging'))}×; "
        f"cascade / oracle: {ms(ratio('cascade', 'oracle'))}×; "
        f"logging / random-eligible: {ms(ratio('logging', 'random-eligible'))}×."
    )
    rk = [r["ranking"] for r in res]
    n_deep = sum(bool(r["ranking_valid"].get("deep_used")) for r in res)
    auc_tab = "\n".join(
        [
            "| metric (test impressions) | cascade | truth (ceiling) |",
            "|---|---|---|",
            f"| AUC pCTR | {ms([x['auc_ctr'] for x in rk], '{:.4f}')} | "
            f"{ms([r['truth_auc_ctr'] for r in res], '{:.4f}')} |",
            f"| GAUC pCTR (per user) | {ms([x['gauc_ctr'] for x in rk], '{:.4f}')} | |",
            f"| AUC pCVR (clicked impressions) | {ms([x['auc_cvr'] for x in rk], '{:.4f}')} | |",
            f"| AUC pCTR·pCVR (conversions) | {ms([x['auc_ctcvr'] for x in rk], '{:.4f}')} | |",
            f"| deep part kept (valid AUC decides; else the wide part alone) | "
            f"{n_deep} of {len(res)} seeds | |",
            f"| retrieval recall@200 of valid-day clicks | "
            f"{ms([r['retrieval']['valid_recall'] for r in res], '{:.3f}')} | |",
            f"| impressions / clicks / conversions | "
            f"{ms([x['n_impressions'] for x in rk], '{:.0f}')} / "
            f"{ms([x['n_clicks'] for x in rk], '{:.0f}')} / "
            f"{ms([x['n_conversions'] for x in rk], '{:.0f}')} | |",
        ]
    )
    seg_lines = [
        "| policy | RPM new ads | RPM old ads | new-ad share of impressions | new-ad share of "
        "revenue | CTCVR new | CTCVR old | RPM low tier | RPM mid tier | RPM high tier |",
        "|---|" + "---|" * 9,
    ]
    for p in names:
        g = [r["sim"][p]["segments"] for r in res]
        seg_lines.append(
            f"| {p} | {ms([x['new_ads']['rpm'] for x in g])}"
            f" | {ms([x['old_ads']['rpm'] for x in g])}"
            f" | {pct([x['new_ads']['impression_share'] for x in g], 1)}"
            f" | {pct([x['new_ads']['revenue_share'] for x in g], 1)}"
            f" | {pct([x['new_ads']['ctcvr'] for x in g], 3)}"
            f" | {pct([x['old_ads']['ctcvr'] for x in g], 3)}"
            f" | {ms([x['tier_low']['rpm'] for x in g])} | {ms([x['tier_mid']['rpm'] for x in g])}"
            f" | {ms([x['tier_high']['rpm'] for x in g])} |"
        )
    n_req = res[0]["sim"]["oracle"]["n_requests"]
    time_lines = ["| step | seconds |", "|---|---|"]
    for p in names:
        time_lines.append(
            f"| replay one test day ({n_req:,} requests), {p} | "
            f"{ms([r['sim'][p]['seconds'] for r in res], '{:.1f}')} |"
        )
    time_lines.append(f"| train the cascade | {ms([r['train_seconds'] for r in res], '{:.0f}')} |")
    auc_mean = float(np.mean([x["auc_ctr"] for x in rk]))
    r_rand = float(np.mean(ratio("cascade", "random-eligible")))
    r_log = ratio("cascade", "logging")
    checks = [
        f"- ranking AUC ≥ 0.70: **{'yes' if auc_mean >= 0.70 else 'no'}** ({auc_mean:.4f}; the "
        f"true pCTR itself reaches {np.mean([r['truth_auc_ctr'] for r in res]):.4f})",
        f"- RPM ≥ 1.3 × random-eligible: **{'yes' if r_rand >= 1.3 else 'no'}** ({r_rand:.1f}×)",
        f"- RPM ≥ logging: **{'yes' if min(r_log) >= 1 else 'no'}** "
        f"(per seed: {', '.join(f'{x:.2f}×' for x in r_log)})",
    ]
    return "\n\n".join(
        [
            "## Policies (test day, expected values under the hidden truth)\n\n" + table,
            ratios,
            "## Acceptance\n\n" + "\n".join(checks),
            "## Ranking model\n\n" + auc_tab,
            "## Segments\n\nNew ads: age ≤ 3 days at the request (metrics over the requests that "
            "showed one); tiers: the users' activity tier (RPM per 1000 requests of that tier).\n\n"
            + "\n".join(seg_lines),
            "## Wall time\n\n" + "\n".join(time_lines),
            NOTES,
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--cache", type=Path, default=Path("out/bench"))
    ap.add_argument("--gpr", default=None, help="GPR run dir per seed, e.g. 'out/gpr_s{seed}'")
    ap.add_argument(
        "--gpr-serve", action="append", default=[], help="serve.field=value for the GPR run"
    )
    ap.add_argument("--out", type=Path, default=Path("docs/results/business.md"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--cascade", action="append", default=[], help="cascade config override field=value"
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = [run_seed(args, s) for s in args.seeds]
    body = report(args, res)
    print(body)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=float))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cmd = "python experiments/business/business.py " + " ".join(sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    header = (
        f"# Business results: cascade vs baselines under the true world\n\n"
        f"`{cmd.strip()}` — preset {args.preset}, seeds {', '.join(map(str, args.seeds))} "
        f"(mean ± std over seeds); {machine}; commit {commit}; "
        f"{datetime.date.today().isoformat()}; total {time.perf_counter() - t0:.0f} s.\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n" + body + "\n")


if __name__ == "__main__":
    main()

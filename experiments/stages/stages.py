"""The stage benchmark (issue 6): MTP → +VAFT → +DPO → +HEPO → +HEPO with ARR, and vs the cascade.

    python experiments/stages/stages.py --seeds 7 [--preset small] [--beam 20] \
        [--set align.steps=200]
    python experiments/stages/stages.py --seeds 7 8 9 --report     # tables from the cached seeds

Per seed, under --work/s{seed} (every step is cached and skipped when its output exists, so an
interrupted run resumes): the world (`--cache`, shared with experiments/business/business.py),
RQ-Kmeans+ SIDs, the cascade (the simulator's ranking models and the baseline), GPR MTP, then VAFT
from MTP, DPO from VAFT, then HEPO from DPO and HEPO with ARR from DPO twice: as Eq. 5-10 stand
(z-scored leaf, final_value reward, KL 0.01 to its init, DPO) and anchored to VAFT (`ANCHORED`:
KL 0.5 to the VAFT run, centred leaf, log reward, the reference's top-20 as candidates, the
checkpoint kept by the regularised objective; docs/results/log/stages_analysis.md §13). Each run
gets the value evaluation (`gpr eval --value`, K = 40 on `--value-limit` test requests) and the
test-day replay (`gpr simulate`, beam `--beam` per MTP head). Writes docs/results/stages.md
(--out).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "business"))  # the sibling experiment
from business import ms, pct, world  # noqa: E402

from gpr.cascade.train import train_cascade  # noqa: E402
from gpr.core.config import AlignConfig, GprConfig, load_config  # noqa: E402
from gpr.eval.simulate import SimData, simulate  # noqa: E402
from gpr.eval.value import value_eval  # noqa: E402
from gpr.policy.cascade import CascadePolicy  # noqa: E402
from gpr.policy.generative import GenerativePolicy  # noqa: E402
from gpr.tokenizer.pipeline import run_tokenize  # noqa: E402
from gpr.train.align import align  # noqa: E402
from gpr.train.mtp import train  # noqa: E402
from gpr.train.vaft import train_vaft  # noqa: E402

STAGES = ("mtp", "vaft", "dpo", "hepo", "hepo_arr", "hepo_vaft", "hepo_vaft_arr")
LABEL = {
    "mtp": "MTP",
    "vaft": "+VAFT",
    "dpo": "+DPO",
    "hepo": "+HEPO (Eq. 8's z-score, KL to DPO)",
    "hepo_arr": "+HEPO with ARR (Eq. 8's z-score, KL to DPO)",
    "hepo_vaft": "+HEPO (KL to VAFT)",
    "hepo_vaft_arr": "+HEPO with ARR (KL to VAFT)",
}
VALUE_RANKED = ("mtp", "hepo_arr")
# HEPO anchored to the fine-tuned run: with a log reward and the centred leaf the optimum of
# E[R] - β KL(π || π_VAFT) is π ∝ π_VAFT · final_value^(1/β) (β = 0.5: the simulator's value
# squared), which DPO's drift cannot move (docs/results/log/stages_analysis.md §13)
ANCHORED = {
    "reward": "log_value",
    "leaf_advantage": "center",
    "kl_weight": 0.5,
    "candidate_pool": 20,
    "select": "objective",
}
# stage: (init, reference or None for the init, ARR, anchored settings)
ALIGNED = {
    "dpo": ("vaft", None, False, False),
    "hepo": ("dpo", None, False, False),
    "hepo_arr": ("dpo", None, True, False),
    "hepo_vaft": ("dpo", "vaft", False, True),
    "hepo_vaft_arr": ("dpo", "vaft", True, True),
}
SIM_KEYS = ("rpm", "ctr", "cvr", "ctcvr", "gmv_per_mille")


def _timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def train_stages(
    cfg: GprConfig, wdir: Path, work: Path, cache: Path, seed: int, upto: str = STAGES[-1]
) -> dict[str, Any]:
    """Train (or reuse) the SIDs, the cascade and the stages up to and including `upto`."""
    secs: dict[str, float] = {}
    wanted = STAGES[: STAGES.index(upto) + 1]
    tok = work / "sids"
    if not (tok / "sids.parquet").exists():
        _, secs["sids"] = _timed(run_tokenize, wdir, cfg, tok)
    casc = cache / f"cascade_s{seed}"
    if not (casc / "run.json").exists():
        _, secs["cascade"] = _timed(train_cascade, wdir, cfg.cascade, seed, casc)
    runs = {s: work / s for s in STAGES}
    if not (runs["mtp"] / "run.json").exists():
        _, secs["mtp"] = _timed(train, wdir, tok, cfg, runs["mtp"], "gpr", False)
    if "vaft" in wanted and not (runs["vaft"] / "run.json").exists():
        _, secs["vaft"] = _timed(train_vaft, runs["mtp"], casc, cfg, runs["vaft"], False)
    anchored = cfg.model_copy(
        update={"align": AlignConfig.model_validate({**cfg.align.model_dump(), **ANCHORED})}
    )
    for stage, (init, ref, arr, anchor) in ALIGNED.items():
        if stage in wanted and not (runs[stage] / "run.json").exists():
            kind = "dpo" if stage == "dpo" else "hepo"
            _, secs[stage] = _timed(
                align,
                kind,
                runs[init],
                casc,
                anchored if anchor else cfg,
                runs[stage],
                arr,
                False,
                None if ref is None else runs[ref],
            )
    return {"runs": runs, "cascade": casc, "seconds": secs}


def evaluate_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    work = args.work / f"s{seed}"
    res_path = work / "result.json"
    res: dict[str, Any] = json.loads(res_path.read_text()) if res_path.exists() else {}
    cfg = load_config(args.preset, overrides=args.set, seed=seed)
    wdir = world(args.preset, seed, args.cache)
    t = train_stages(cfg, wdir, work, args.cache, seed)
    res.setdefault("train_seconds", {}).update(t["seconds"])
    data = SimData.load(wdir)
    if "cascade" not in res.get("sim", {}):
        pol = CascadePolicy(t["cascade"], wdir, logs=data.logs)
        res.setdefault("sim", {})["cascade"] = simulate(pol, data)
    for stage in STAGES:
        run = t["runs"][stage]
        if stage not in res.get("value", {}):
            res.setdefault("value", {})[stage] = value_eval(run, "test", 40, args.value_limit)
        if stage not in res["sim"]:
            res["sim"][stage] = simulate(GenerativePolicy(run, wdir, beam=args.beam), data)
        info = json.loads((run / "run.json").read_text())
        res.setdefault("runs", {})[stage] = {
            k: info.get(k) for k in ("stage", "best", "seconds", "first_reward", "last_reward")
        }
        print(
            f"seed {seed} {stage}: rpm {res['sim'][stage]['rpm']:.2f} "
            f"ndcg {res['value'][stage]['ndcg_value']:.4f}",
            file=sys.stderr,
            flush=True,
        )
        res_path.write_text(json.dumps(res, indent=2, default=float))
    for stage in VALUE_RANKED:  # the same runs, ranked by HTE's value alone
        key = f"{stage}+value"
        if key not in res["sim"]:
            by_value = ["serve.score.logp=0", "serve.score.log_hte_value=1"]
            pol = GenerativePolicy(t["runs"][stage], wdir, beam=args.beam, overrides=by_value)
            res["sim"][key] = simulate(pol, data)
            print(f"seed {seed} {key}: rpm {res['sim'][key]['rpm']:.2f}", file=sys.stderr)
            res_path.write_text(json.dumps(res, indent=2, default=float))
    return res


NOTES = """## How these numbers are made

- Per seed: `gpr world generate --preset small`, RQ-Kmeans+ SIDs, the cascade (its ranking model is
  the simulator), GPR MTP (small preset: d 64, 2 layers, 4 MTP heads, one epoch), VAFT from MTP
  (`paper` weights, one epoch), DPO from VAFT, HEPO from DPO, HEPO with ARR from DPO. Alignment
  defaults (`align` section): 200 steps × 32 requests × K = 40 candidates, lr 1e-4, DPO β 0.1,
  HEPO 2 PPO epochs, clip 0.2, γ 1, λ 0.95, α_l 0.1, KL 0.01, value weight 0.5, ARR share 0.25;
  the best step by the simulator's value on 200 valid requests is kept.
- "KL to VAFT": HEPO from DPO as above, but with the KL (weight 0.5) to the VAFT run instead of
  its init (`gpr train --stage hepo --init DPO --reference VAFT`), reward log final_value, the
  leaf advantage centred instead of z-scored (`align.leaf_advantage=center`), candidates sampled
  among the reference's top-20 beam ads (`align.candidate_pool=20`), and the step kept by the
  regularised objective E[log v] − 0.5 · KL on the valid requests (`align.select=objective`).
- Value metrics: `gpr eval --value` on 1,000 test requests (K = 40 sampled candidates, true values
  min-max normalised over each request's eligible ads). RPM, CTR, CTCVR, GMV: `gpr simulate` on
  the whole test day with budgets, beam 20 per MTP head (the cascade: its own retrieval top-200).
- "ranked by HTE value": the same run served with `serve.score.logp=0
  serve.score.log_hte_value=1` (bid × HTE pCTR × HTE pCVR over the union of the heads' beams).
- Why DPO and HEPO lower the true RPM while raising the simulator's value, and the fixes tried:
  `log/stages_analysis.md` (`experiments/stages/simulator_gap.py`).
"""


def report(res: list[dict[str, Any]]) -> str:
    lines = [
        "| stage | nDCG | OPR | avg final_value | max final_value | RPM | CTR | CTCVR "
        "| GMV / mille |",
        "|---|" + "---|" * 8,
    ]
    for stage in STAGES:
        v = [r["value"][stage] for r in res]
        s = [r["sim"][stage] for r in res]
        lines.append(
            f"| {LABEL[stage]} | {ms([x['ndcg_value'] for x in v], '{:.4f}')} | "
            f"{ms([x['opr'] for x in v], '{:.4f}')} | "
            f"{ms([x['avg_final_value'] for x in v], '{:.4f}')} | "
            f"{ms([x['max_final_value'] for x in v], '{:.4f}')} | "
            f"{ms([x['rpm'] for x in s])} | {pct([x['ctr'] for x in s])} | "
            f"{pct([x['ctcvr'] for x in s], 3)} | {ms([x['gmv_per_mille'] for x in s], '{:.1f}')} |"
        )
    for key in (f"{x}+value" for x in VALUE_RANKED):
        if not all(key in r["sim"] for r in res):
            continue
        s = [r["sim"][key] for r in res]
        name = LABEL[key.split("+")[0]] + ", ranked by HTE value"
        lines.append(
            f"| {name} | | | | | {ms([x['rpm'] for x in s])} | {pct([x['ctr'] for x in s])} | "
            f"{pct([x['ctcvr'] for x in s], 3)} | {ms([x['gmv_per_mille'] for x in s], '{:.1f}')} |"
        )
    c = [r["sim"]["cascade"] for r in res]
    lines.append(
        f"| cascade | | | | | {ms([x['rpm'] for x in c])} | {pct([x['ctr'] for x in c])} | "
        f"{pct([x['ctcvr'] for x in c], 3)} | {ms([x['gmv_per_mille'] for x in c], '{:.1f}')} |"
    )
    per_seed = ["| seed | " + " | ".join(LABEL[s] for s in STAGES) + " | cascade |"]
    per_seed.append("|---|" + "---|" * (len(STAGES) + 1))
    for r in res:
        cells = [f"{r['sim'][s]['rpm']:.2f}" for s in (*STAGES, "cascade")]
        per_seed.append(f"| {r['seed']} | " + " | ".join(cells) + " |")

    def rel(stage: str, key: str) -> list[float]:
        return [r["sim"][stage][key] / r["sim"]["cascade"][key] - 1 for r in res]

    vs = [
        "| stage | RPM | CTR | CTCVR | GMV / mille |",
        "|---|---|---|---|---|",
        *(
            f"| {LABEL[st]} | "
            + " | ".join(pct(rel(st, k), 1) for k in ("rpm", "ctr", "ctcvr", "gmv_per_mille"))
            + " |"
            for st in STAGES
        ),
    ]
    seg = [
        "| policy | RPM new ads | RPM old ads | CTCVR new | CTCVR old | RPM low tier | "
        "RPM mid tier | RPM high tier |",
        "|---|" + "---|" * 7,
    ]
    for p in ("cascade", *STAGES):
        g = [r["sim"][p]["segments"] for r in res]
        name = LABEL.get(p, p)
        seg.append(
            f"| {name} | {ms([x['new_ads']['rpm'] for x in g])} | "
            f"{ms([x['old_ads']['rpm'] for x in g])} | "
            f"{pct([x['new_ads']['ctcvr'] for x in g], 3)} | "
            f"{pct([x['old_ads']['ctcvr'] for x in g], 3)} | "
            f"{ms([x['tier_low']['rpm'] for x in g])} | {ms([x['tier_mid']['rpm'] for x in g])} | "
            f"{ms([x['tier_high']['rpm'] for x in g])} |"
        )
    times = ["| step | seconds |", "|---|---|"]
    for k in ("sids", "cascade"):
        vals = [r["train_seconds"][k] for r in res if k in r.get("train_seconds", {})]
        if vals:
            times.append(f"| train {k} | {ms(vals, '{:.0f}')} |")
    for st in STAGES:  # as the run recorded it (also when cached from an earlier invocation)
        times.append(
            f"| train {LABEL[st]} | {ms([r['runs'][st]['seconds'] for r in res], '{:.0f}')} |"
        )
    for p in ("cascade", *STAGES):
        times.append(
            f"| replay, {LABEL.get(p, p)} | {ms([r['sim'][p]['seconds'] for r in res], '{:.0f}')} |"
        )

    def gain(a: str, b: str) -> list[float]:
        return [r["sim"][a]["rpm"] / r["sim"][b]["rpm"] - 1 for r in res]

    def verdict(x: list[float]) -> str:
        m, sd = float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
        ok = m > 0 and m > sd
        return (
            f"**{'yes' if ok else 'no'}** ({pct(x, 1)}; per seed "
            + ", ".join(f"{100 * v:+.1f} %" for v in x)
            + ")"
        )

    checks = [
        f"- VAFT improves RPM over MTP beyond the seed spread: {verdict(gain('vaft', 'mtp'))}",
        "- HEPO improves RPM over DPO beyond the seed spread:",
        f"  - HEPO with KL to VAFT: {verdict(gain('hepo_vaft', 'dpo'))}",
        f"  - HEPO as Eq. 8 stands: {verdict(gain('hepo', 'dpo'))}",
        "  - (for reference, HEPO with KL to VAFT over VAFT itself: "
        f"{pct(gain('hepo_vaft', 'vaft'), 1)})",
    ]
    for st in ("hepo_vaft_arr", "hepo_arr"):
        full_rpm, full_ctcvr = rel(st, "rpm"), rel(st, "ctcvr")
        checks.append(
            f"- full GPR ({LABEL[st][1:]}) vs the cascade, RPM ≥ +8 %: "
            f"**{'yes' if np.mean(full_rpm) >= 0.08 else 'no'}** ({pct(full_rpm, 1)}); "
            f"CTCVR ≥ +5 %: **{'yes' if np.mean(full_ctcvr) >= 0.05 else 'no'}** "
            f"({pct(full_ctcvr, 1)})"
        )
    return "\n\n".join(
        [
            "## Acceptance (issue 6)\n\n" + "\n".join(checks),
            "## Stages (test day; value metrics over K = 40 sampled candidates per request)\n\n"
            + "\n".join(lines),
            "RPM per seed:\n\n" + "\n".join(per_seed),
            "## Each stage vs the cascade (relative difference, mean ± std over seeds)\n\n"
            + "\n".join(vs),
            "## Segments\n\n" + "\n".join(seg),
            "## Wall time\n\n" + "\n".join(times),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--cache", type=Path, default=Path("out/bench"))
    ap.add_argument("--work", type=Path, default=Path("out/bench/stages"))
    ap.add_argument("--beam", type=int, default=20, help="replay beam per MTP head")
    ap.add_argument("--value-limit", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], help="config override (all stages)")
    ap.add_argument("--report", action="store_true", help="only tabulate the cached seeds")
    ap.add_argument("--out", type=Path, default=Path("docs/results/stages.md"))
    ap.add_argument("--notes", type=Path, default=None, help="markdown appended to --out")
    args = ap.parse_args()
    if args.report:
        res = [json.loads((args.work / f"s{s}" / "result.json").read_text()) for s in args.seeds]
    else:
        res = [evaluate_seed(args, s) for s in args.seeds]
    for r, s in zip(res, args.seeds, strict=True):
        r["seed"] = s
    body = report(res)
    print(body)
    if args.report:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        head = (
            f"# Value alignment: the stage table\n\n`python experiments/stages/stages.py "
            f"{' '.join(sys.argv[1:])}` — preset {args.preset}, seeds "
            f"{', '.join(map(str, args.seeds))} (mean ± std); {machine}; commit {commit}; "
            f"{datetime.date.today().isoformat()}. Runs are cached per stage: each was made by\n"
            f"the code of its own time (see its run.json), then tabulated here.\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        notes = args.notes.read_text() if args.notes else ""
        args.out.write_text(head + "\n" + body + "\n\n" + NOTES + "\n" + notes)


if __name__ == "__main__":
    main()

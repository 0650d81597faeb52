"""The Table-2 analogue on the ad world: HitR@100 of HSTU, each HHD component alone on top of it,
MTP, and full GPR — several seeds, mean ± sd.

    python experiments/ablation/ablation.py --preset small --seeds 7 8 9 --work out/bench/ablation \
        [--variants hstu full ...] [--set train.epochs=10] [--out docs/results/ablation_raw.json]

Per seed: the world (seed s), RQ-Kmeans+ semantic IDs, then one training per variant with early
stopping on validation HitR@100, evaluated on the test day (engaged ads). Cached under --work.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gpr.core.config import load_config
from gpr.core.io import atomic_write_text, write_json
from gpr.eval.retrieval import evaluate_run
from gpr.tokenizer.pipeline import run_tokenize
from gpr.train.mtp import train
from gpr.world import generate_world

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "business"))  # the sibling experiment
from business import ms  # noqa: E402  (mean ± sd, ddof 1, as in the business tables)

HSTU_OFF = {
    "hybrid_attention": False,
    "token_aware_ln": False,
    "token_aware_ffn": False,
    "mor_extra": 0,
    "thought_tokens": 0,
    "thinking_tokens": 0,
    "refining": False,
    "hte": False,
    "mtp_heads": 1,
}
# each variant = the HSTU baseline with these fields back at the preset's value (Table 2 rows)
VARIANTS: dict[str, tuple[str, ...]] = {
    "hstu": (),
    "+hybrid_attention": ("hybrid_attention",),
    "+token_aware_ffn": ("token_aware_ffn",),
    "+token_aware_ln": ("token_aware_ln",),
    "+mor": ("mor_extra",),
    "+thoughts": ("thought_tokens",),
    "+thinking": ("thinking_tokens",),
    "+refining": ("refining",),
    "+hte": ("hte",),
    "+mtp": ("mtp_heads",),
    "full": tuple(HSTU_OFF),
}


def overrides_for(variant: str) -> list[str]:
    """`--set` overrides that switch off every component the variant does not keep."""
    keep = VARIANTS[variant]
    return [f"model.{k}={json.dumps(v)}" for k, v in HSTU_OFF.items() if k not in keep]


def report(rows: list[dict[str, Any]], variants: list[str]) -> str:
    """Markdown: HitR@100 / R@10 / NDCG@10 mean ± sd over seeds, the ratio to HSTU, train time."""
    lines = [
        "| variant | seeds | HitR@100 | R@10 | NDCG@10 | HitR@100 vs HSTU | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    hstu = np.mean([r["hitrate@100"] for r in rows if r["variant"] == "hstu"] or [np.nan])
    for v in variants:
        sel = [r for r in rows if r["variant"] == v]
        if not sel:
            continue

        def cell(key: str, sel: list[dict[str, Any]] = sel) -> str:
            return ms([r[key] for r in sel], "{:.4f}")

        ratio = np.mean([r["hitrate@100"] for r in sel]) / hstu
        secs = np.mean([r["train_seconds"] for r in sel])
        lines.append(
            f"| {v} | {len(sel)} | {cell('hitrate@100')} | {cell('recall@10')} | {cell('ndcg@10')} "
            f"| {ratio:.3f}× | {secs:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seeds", nargs="+", type=int, default=[7, 8, 9])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--work", type=Path, default=Path("out/bench/ablation"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None, help="markdown report (docs/results/...)")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"# ablation: preset {args.preset}, seeds {args.seeds}, commit {commit}")
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        base = load_config(args.preset, overrides=args.overrides, seed=seed)
        world, tok = args.work / f"world_s{seed}", args.work / f"sids_s{seed}"
        if not (world / "manifest.json").exists():
            generate_world(base.world, seed, world, base.preset)
        if not (tok / "metrics.json").exists():
            run_tokenize(world, base, tok)
        for v in args.variants:
            cfg = load_config(
                args.preset, overrides=[*args.overrides, *overrides_for(v)], seed=seed
            )
            run = args.work / f"run_{v.strip('+')}_s{seed}"
            if not (run / "run.json").exists():
                train(world, tok, cfg, run, "gpr", progress=False)
            cached = run / "eval_test.json"  # reused, so that a report over finished runs is quick
            if cached.exists():
                res = json.loads(cached.read_text())
            else:
                res = evaluate_run(run, "test")
                write_json(cached, res)
            secs = json.loads((run / "run.json").read_text()).get("seconds", float("nan"))
            rows.append({"variant": v, "seed": seed, "train_seconds": secs, **res})
            print(f"{v:>20} seed {seed}: HitR@100 {res['hitrate@100']:.4f}", flush=True)
    table = report(rows, args.variants)
    print(table)
    if args.md:
        machine = f"{platform.machine()}, {os.cpu_count()} cores"
        cmd = "python experiments/ablation/ablation.py " + " ".join(sys.argv[1:])
        head = (
            f"`{cmd}` — preset {args.preset}, seeds {' '.join(map(str, args.seeds))}; {machine}; "
            f"commit {commit}; {datetime.date.today().isoformat()}.\n\n"
        )
        atomic_write_text(args.md, head + table + "\n")
    if args.out:
        args.out.write_text(json.dumps({"commit": commit, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

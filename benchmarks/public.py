"""Public benchmarks (TIGER protocol): GPR vs TIGER vs SASRec (and HSTU) on Amazon Beauty / Sports.

    python benchmarks/public.py --datasets beauty sports --models gpr tiger sasrec \
        --preset base --seeds 7 --work out/bench/public --out docs/results/public_raw.json

Per dataset: import (leave-one-out), MiniLM item embeddings, RQ-Kmeans+ semantic IDs, then each
model trained with early stopping on validation NDCG@10 and evaluated on the test split over the
full catalogue (beam = train.beam). Everything is cached under --work; reruns skip done steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from gpr.config import load_config
from gpr.data.amazon import import_amazon
from gpr.data.sequences import HISTORY_MAX
from gpr.tokenizer.embed import embed_items
from gpr.tokenizer.pipeline import run_tokenize
from gpr.train.mtp import evaluate_run, train

DATASETS = {
    "beauty": ("amazon_beauty", "Beauty.txt"),
    "sports": ("amazon_sports", "Sports_and_Outdoors.txt"),
}
KEYS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def prepare_dataset(
    name: str, shared: Path, work: Path, cfg_args: dict[str, Any]
) -> tuple[Path, Path]:
    folder, seq = DATASETS[name]
    data, tok = work / name / "data", work / name / "tok"
    if not (data / "manifest.json").exists():
        import_amazon(shared / folder / seq, shared / folder / "item_meta.tsv", data, name)
    embed_items(data)
    if not (tok / "metrics.json").exists():
        run_tokenize(data, load_config(**cfg_args), tok)
    return data, tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["beauty", "sports"], choices=list(DATASETS))
    ap.add_argument("--models", nargs="+", default=["gpr", "tiger", "sasrec"])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--seeds", nargs="+", type=int, default=[7])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--work", type=Path, default=Path("out/bench/public"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.overrides = [f"model.max_len={HISTORY_MAX}", *args.overrides]  # TIGER protocol
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    where = f"commit {commit}, {platform.machine()}"
    print(f"# public benchmark: preset {args.preset}, {where}, seeds {args.seeds}")
    results: dict[str, Any] = {"commit": commit, "preset": args.preset, "runs": []}
    for name in args.datasets:
        data, tok = prepare_dataset(
            name, args.shared, args.work, {"preset": args.preset, "overrides": args.overrides}
        )
        print(f"\n## {name}\n\n| model | seed | R@5 | N@5 | R@10 | N@10 | train s | epochs |")
        print("|---|---|---|---|---|---|---|---|")
        for model in args.models:
            for seed in args.seeds:
                cfg = load_config(args.preset, overrides=args.overrides, seed=seed)
                run = args.work / name / f"run_{model}_s{seed}"
                if not (run / "run.json").exists():
                    train(data, tok, cfg, run, model, progress=False)
                info = json.loads((run / "run.json").read_text())
                res = evaluate_run(run, "test")
                row = {
                    "dataset": name,
                    "model": model,
                    "seed": seed,
                    "train_seconds": info["seconds"],
                    "epochs": info["epochs_run"],
                    **{k: res[k] for k in KEYS},
                }
                results["runs"].append(row)
                print(
                    f"| {model} | {seed} | "
                    + " | ".join(f"{res[k]:.4f}" for k in KEYS)
                    + f" | {info['seconds']:.0f} | {info['epochs_run']} |",
                    flush=True,
                )
        for model in args.models:
            rows = [r for r in results["runs"] if r["dataset"] == name and r["model"] == model]
            if len(rows) > 1:
                print(
                    f"| {model} mean ± sd | | "
                    + " | ".join(
                        f"{np.mean([r[k] for r in rows]):.4f} ± {np.std([r[k] for r in rows]):.4f}"
                        for k in KEYS
                    )
                    + " | | |"
                )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

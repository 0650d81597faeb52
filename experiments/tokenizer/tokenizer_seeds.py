"""Seed spread of the tokenizer comparison: mean ± sd over seeds of collision, CUR_L1, PAS, recon.

    python experiments/tokenizer/tokenizer_seeds.py --data beauty=out/bench/beauty world=DIR \
        --seeds 7 8 9 --preset small --work out/bench/tok_seeds

Datasets must already hold embeddings or be embeddable (`gpr embed`). Each (seed, dataset) runs
`run_compare` once into WORK/s<seed>/<name>/ and is reused when its compare.json exists.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from gpr.core.config import load_config
from gpr.core.runtime import set_threads
from gpr.tokenizer.pipeline import run_compare

METHODS = ("rq_kmeans", "rq_vae", "rq_kmeans_plus")


def rows_for(name: str, data: Path, seed: int, preset: str, work: Path) -> list[dict[str, Any]]:
    out = work / f"s{seed}" / name
    if (out / "compare.json").exists():
        rows: list[dict[str, Any]] = json.loads((out / "compare.json").read_text())["rows"]
        return rows
    return run_compare(data, load_config(preset), out, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, help="name=DIR pairs")
    ap.add_argument("--seeds", nargs="+", type=int, default=[7, 8, 9])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--work", type=Path, default=Path("out/bench/tok_seeds"))
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        set_threads(args.threads)
    for pair in args.data:
        name, path = pair.split("=", 1)
        runs = [rows_for(name, Path(path), s, args.preset, args.work) for s in args.seeds]
        print(f"\n## {name}: seeds {args.seeds}, preset {args.preset}\n")
        print("| method | collision | CUR_L1 | PAS | recon MSE | seconds |")
        print("|---|---|---|---|---|---|")
        for m in METHODS:
            got = [next(r for r in rows if r["method"] == m) for rows in runs]

            def stat(key: str, fn: Any = float, fmt: str = ".4f", got: list = got) -> str:  # type: ignore[type-arg]
                v = np.array([fn(r[key]) for r in got], dtype=float)
                return f"{v.mean():{fmt}} ± {v.std():{fmt}}"

            cells = [
                stat("collision_rate", fmt=".2%"),
                stat("cur", lambda c: c[0], ".3f"),
                stat("pas"),
                stat("recon_mse", fmt=".5f"),
                stat("seconds", fmt=".1f"),
            ]
            print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

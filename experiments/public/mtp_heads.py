"""Retrieval metrics of a trained GPR run when generation decodes only its first n MTP heads.

    python experiments/public/mtp_heads.py --run out/pub/beauty/run_gpr_s7 --split valid \
        --limit 1500 --heads 1 4

The model is the run's; only the number of heads that decode (and whose beams form the ranked
union) changes. `--limit` samples the same positions as training's validation (the run's seed).
"""

from __future__ import annotations

import argparse

import torch

from gpr.core.config import GprConfig
from gpr.core.runtime import set_threads
from gpr.model.gpr import GPRModel
from gpr.model.prepare import eval_positions
from gpr.model.registry import load_run
from gpr.model.retrieve import evaluate

KEYS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--heads", nargs="+", type=int, default=[1])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    model, prep, info = load_run(args.run)
    if not isinstance(model, GPRModel):
        raise SystemExit(f"{args.run}: a {info['model']} run has no MTP heads")
    cfg = GprConfig.model_validate(info["config"])
    pos = eval_positions(prep, args.split, args.limit, cfg.seed)
    full = model.cfg
    print(f"| heads | {' | '.join(KEYS)} |  ({args.run}, {args.split}, {len(pos)} predictions)")
    for n in args.heads:
        model.cfg = full.model_copy(update={"mtp_heads": min(n, full.mtp_heads)})
        res = evaluate(model, prep, pos, cfg.train.beam, cfg.train.batch_size, torch.device("cpu"))
        print(f"| {n} | " + " | ".join(f"{res[k]:.4f}" for k in KEYS) + " |", flush=True)


if __name__ == "__main__":
    main()

"""Popularity drift on the TIGER protocol: re-rank a run's beam by log p − β · log(1 + train count).

    python benchmarks/popularity_rerank.py --run out/pub/sports/run_gpr_collab_content_s7 \
        --betas 0 0.1 0.2 0.3 0.5

A leave-one-out test target is later in time than the valid one and less popular in the train
split (benchmarks/knn.py prints the drift), so a model's learned popularity prior fits the
valid targets better than the test ones. This re-ranks each user's beam (train.beam candidates,
so R@beam does not move) by the path log-probability minus β times the log train count of the
item, for every β of --betas; β is chosen on the valid split (best N@10) and the test split is
reported at that β next to β = 0. No retraining; `--limit` samples users as validation does.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from gpr.config import GprConfig
from gpr.eval.retrieval import retrieval_metrics
from gpr.model.journey import SPLIT_CODE, I
from gpr.train.mtp import eval_positions, generate_ranked, load_run

KEYS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def rerank(items: np.ndarray, logp: np.ndarray, count: np.ndarray, beta: float) -> np.ndarray:
    """(N, B) items re-sorted by logp − beta·log(1 + count[item]); -1 pads stay last."""
    score = np.where(items >= 0, logp - beta * np.log1p(count[np.maximum(items, 0)]), -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")
    return np.take_along_axis(items, order, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, prep, info = load_run(args.run)
    cfg = GprConfig.model_validate(info["config"])
    j = prep.journeys
    train_i = (j.ttype == I) & (j.split == SPLIT_CODE["train"]) & (j.item >= 0)
    count = np.bincount(j.item[train_i], minlength=len(prep.sids.codes)).astype(np.float64)
    valid_items = prep.trie.items.numpy()
    res: dict[str, dict[str, dict[str, float]]] = {}
    dev = torch.device("cpu")
    for split in ("valid", "test"):
        pos = eval_positions(prep, split, args.limit, cfg.seed)
        items, logp, target, _ = generate_ranked(
            model, prep, pos, cfg.train.beam, cfg.train.batch_size, dev
        )
        res[split] = {
            f"{b:g}": retrieval_metrics(rerank(items, logp, count, b), target, valid_items)
            for b in args.betas
        }
    best = max(args.betas, key=lambda b: res["valid"][f"{b:g}"]["ndcg@10"])
    print(f"{args.run} ({info['model']}), beam {cfg.train.beam}; β kept on valid N@10: {best:g}")
    heads = [f"valid {k}" for k in KEYS[2:]] + [f"test {k}" for k in KEYS]
    print("| β | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * 6)
    for b in args.betas:
        v, t = res["valid"][f"{b:g}"], res["test"][f"{b:g}"]
        cells = [f"{v[k]:.4f}" for k in KEYS[2:]] + [f"{t[k]:.4f}" for k in KEYS]
        print(f"| {b:g}{' (kept)' if b == best else ''} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": args.run, "best_beta": best, "metrics": res}, f, indent=1)


if __name__ == "__main__":
    main()

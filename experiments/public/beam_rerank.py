"""Re-rank a run's beam by popularity and by similarity to the user's last item (TIGER protocol).

    python experiments/public/beam_rerank.py --run out/pub/sports/run_gpr_cc12_s7 --limit 3000 \
        --betas 0 0.05 0.1 0.2 0.3 0.5
    python experiments/public/beam_rerank.py --run out/pub/beauty/run_gpr_gpu2_s7 --limit 3000 \
        --betas 0 0.1 --alphas 0 1 2 4 8

Each user's beam (train.beam candidates, so R@beam does not move) is re-sorted by

    log p(item) − β · log(1 + train count of item) + α · cos(v(last item), v(item))

with v the content + collaborative vector of experiments/public/knn.py (MiniLM ⊕ the train-split
PPMI-SVD, `--collab-dim`). β: the popularity drift (a leave-one-out test target is later in time
and less popular in the train split than the valid one; experiments/public/knn.py prints the
drift). α: the last-item neighbour signal that the training-free kNN row exploits. (β, α) is chosen
on the valid split (best N@10) and the test split is reported for every pair. No retraining;
`--limit` samples users as validation does.

`--knn K` (needs α > 0 to matter) first widens each beam with the user's K nearest catalogue items
by that cosine that the beam lacks (the last item itself excluded), each given the beam's lowest
log p: a model-agnostic fusion of generation with the training-free kNN of
experiments/public/knn.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from gpr.core.config import GprConfig
from gpr.core.metrics import retrieval_metrics
from gpr.core.runtime import set_threads
from gpr.model.journey import SPLIT_CODE, I
from gpr.model.prepare import eval_positions
from gpr.model.registry import load_run
from gpr.model.retrieve import generate_ranked
from gpr.tokenizer.collab import with_collab
from gpr.tokenizer.embed import embed_items

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knn import rank as knn_rank  # noqa: E402

KEYS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def rerank(items: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(N, B) items re-sorted by score (higher first); -1 pads stay last."""
    score = np.where(items >= 0, score, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")
    return np.take_along_axis(items, order, axis=1)


def item_vectors(data: str, n_items: int, collab_dim: int, seed: int) -> np.ndarray:
    """(n_items, d) unit content + collab vectors by item id (zero rows for items without one)."""
    emb = embed_items(data)
    ids = np.asarray(emb.item_ids)
    full = with_collab(data, ids, emb.matrix, collab_dim, 1.0, 3, seed)
    out = np.zeros((n_items, full.shape[1]), dtype=np.float32)
    out[ids] = full / np.maximum(np.linalg.norm(full, axis=1, keepdims=True), 1e-9)
    return out


def widen(items: np.ndarray, logp: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Append each row's `extra` items that the row lacks, at the row's lowest log p."""
    dup = (extra[:, :, None] == items[:, None, :]).any(axis=2)
    floor = np.where(items >= 0, logp, np.inf).min(axis=1, keepdims=True)
    add = np.where(dup, -1, extra)
    return np.c_[items, add], np.c_[logp, np.where(add >= 0, floor, -np.inf)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0])
    ap.add_argument("--collab-dim", type=int, default=64)
    ap.add_argument("--knn", type=int, default=0, help="widen the beam with K nearest items")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    model, prep, info = load_run(args.run)
    cfg = GprConfig.model_validate(info["config"])
    j = prep.journeys
    n_items = len(prep.sids.codes)
    train_i = (j.ttype == I) & (j.split == SPLIT_CODE["train"]) & (j.item >= 0)
    log_count = np.log1p(np.bincount(j.item[train_i], minlength=n_items).astype(np.float64))
    vec = (
        item_vectors(info["data"], n_items, args.collab_dim, cfg.seed) if any(args.alphas) else None
    )
    valid_items = prep.trie.items.numpy()
    grid = list(itertools.product(args.betas, args.alphas))
    res: dict[str, dict[str, dict[str, float]]] = {}
    dev = torch.device("cpu")
    for split in ("valid", "test"):
        pos = eval_positions(prep, split, args.limit, cfg.seed)
        items, logp, target, _ = generate_ranked(
            model, prep, pos, cfg.train.beam, cfg.train.batch_size, dev
        )
        last = j.item[pos]  # the prediction position holds the user's last item
        if vec is not None and args.knn:
            q = np.searchsorted(valid_items, last)
            if (valid_items[np.minimum(q, len(valid_items) - 1)] != last).any():
                raise SystemExit("--knn needs every last item in the catalogue (public data)")
            near = valid_items[knn_rank(vec[valid_items], q, k=args.knn)]
            items, logp = widen(items, logp, near)
        safe = np.maximum(items, 0)
        sim = np.zeros_like(logp)
        if vec is not None:
            sim = np.einsum("nd,nbd->nb", vec[last], vec[safe])
        res[split] = {
            f"{b:g},{a:g}": retrieval_metrics(
                rerank(items, logp - b * log_count[safe] + a * sim), target, valid_items
            )
            for b, a in grid
        }
    best = max(grid, key=lambda g: res["valid"][f"{g[0]:g},{g[1]:g}"]["ndcg@10"])
    print(
        f"{args.run} ({info['model']}), beam {cfg.train.beam}; "
        f"(β, α) kept on valid N@10: {best[0]:g}, {best[1]:g}"
    )
    heads = [f"valid {k}" for k in KEYS[2:]] + [f"test {k}" for k in KEYS]
    print("| β | α | " + " | ".join(heads) + " |")
    print("|---|---|" + "---|" * 6)
    for b, a in grid:
        v, t = res["valid"][f"{b:g},{a:g}"], res["test"][f"{b:g},{a:g}"]
        cells = [f"{v[k]:.4f}" for k in KEYS[2:]] + [f"{t[k]:.4f}" for k in KEYS]
        kept = " (kept)" if (b, a) == best else ""
        print(f"| {b:g} | {a:g}{kept} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": args.run, "best": best, "metrics": res}, f, indent=1)


if __name__ == "__main__":
    main()

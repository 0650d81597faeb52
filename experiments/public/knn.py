"""A non-learned reference on the TIGER protocol: the last item's nearest neighbours.

    python experiments/public/knn.py --data out/pub/beauty/data --split test --collab-dim 64

For each user, the target of `--split` (valid: second-last item, test: last) is ranked by cosine
to the item just before it, over the full catalogue (the query item itself excluded), in three
item spaces: the MiniLM content embedding, the train-split PPMI-SVD vector
(gpr/tokenizer/collab.py) and their concatenation (what `tokenizer.collab_dim` feeds the
tokenizer). It shows how much item-to-item signal each space carries, i.e. what semantic IDs
built on it can expose to a generative model.

A fourth row, `train popularity`, ranks every user's target against the same top items (the
most frequent train-split items): the share of that signal a trained model also learns. The
drift line compares the targets of --split with the train targets (mean log(1 + train count),
share never seen in train), which is what separates valid from test for models with such a prior.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gpr.core.metrics import retrieval_metrics
from gpr.model.item_head import nearest_by_cosine
from gpr.tokenizer.collab import item_sequences, with_collab
from gpr.tokenizer.embed import embed_items


def query_target(
    user: np.ndarray, item: np.ndarray, sp: np.ndarray, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """(previous item, target item) for every user's `split` O/I event (item_sequences order)."""
    idx = np.nonzero((sp == split) & np.r_[False, user[1:] == user[:-1]])[0]
    return item[idx - 1], item[idx]


def rank(space: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    """Top-k rows by cosine to each query row (the query itself excluded)."""
    e = torch.from_numpy(np.ascontiguousarray(space))
    cols, _ = nearest_by_cosine(e, torch.from_numpy(q), torch.arange(len(e)), k)
    return cols.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", choices=["valid", "test"], default="test")
    ap.add_argument("--collab-dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    emb = embed_items(args.data)
    ids, x = np.asarray(emb.item_ids), emb.matrix
    row = np.full(ids.max() + 1, -1)
    row[ids] = np.arange(len(ids))
    user, item, sp = item_sequences(args.data)
    prev, tgt = query_target(user, item, sp, args.split)
    q, t = row[prev], row[tgt]
    full = with_collab(args.data, ids, x, args.collab_dim, 1.0, args.window, args.seed)
    spaces = {"content": x, "collab": full[:, x.shape[1] :], "content+collab": full}
    res = {}
    print(f"# {args.data} {args.split}: {len(t)} users, collab_dim {args.collab_dim}")
    for name, space in spaces.items():
        top = rank(np.ascontiguousarray(space), q, k=100)
        res[name] = retrieval_metrics(top, t, np.arange(len(ids)))
        m = res[name]
        print(
            f"{name}: R@5 {m['recall@5']:.4f} N@5 {m['ndcg@5']:.4f} "
            f"R@10 {m['recall@10']:.4f} N@10 {m['ndcg@10']:.4f}"
        )
    count = np.bincount(row[item[sp == "train"]], minlength=len(ids))
    popular = np.argsort(-count, kind="stable")[:100]
    res["train popularity"] = retrieval_metrics(
        np.tile(popular, (len(t), 1)), t, np.arange(len(ids))
    )
    m = res["train popularity"]
    print(f"train popularity: R@10 {m['recall@10']:.4f} N@10 {m['ndcg@10']:.4f}")
    res["drift"] = {
        "target_log_train_count": float(np.log1p(count[t]).mean()),
        "target_unseen_in_train": float((count[t] == 0).mean()),
    }
    print(f"drift: {res['drift']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()

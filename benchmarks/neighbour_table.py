"""Build time of the item head's neighbour table (`model.item_head.neighbours`, model/item_head.py).

    python benchmarks/neighbour_table.py --data out/pub/sports/data \
        --sids "out/pub/sports/tok_balanced=true_collab-dim=64" --neighbours 50

Loads the content table as training does (`content_source=tokenizer`: MiniLM ⊕ collab), then
times `ItemHead.neighbour_table` once on one thread.
"""

from __future__ import annotations

import argparse
import time

import torch

from gpr.core.config import load_config
from gpr.model.item_head import ItemHead
from gpr.model.prepare import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--sids", required=True)
    ap.add_argument("--neighbours", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    over = ["model.item_head=true", "model.content_source=tokenizer"]
    cfg = load_config("small", overrides=over)
    prep = prepare(args.data, args.sids, cfg.model, cfg.tokenizer.codebook_size)
    assert prep.content_table is not None
    head = ItemHead(cfg.model.d_model, prep.content_table, neighbours=args.neighbours)
    t0 = time.perf_counter()
    cols, _ = head.neighbour_table(prep.trie)
    n, dim = prep.content_table.shape
    print(
        f"items {n}, dims {dim}, generatable {len(prep.trie.items)}, K {cols.shape[1]}: "
        f"{time.perf_counter() - t0:.2f} s on one thread"
    )


if __name__ == "__main__":
    main()

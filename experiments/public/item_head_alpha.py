"""The item head's fusion weight α: chosen on the valid split, reported on test (TIGER protocol).

    python experiments/public/item_head_alpha.py --run out/pub/beauty/run_gpr_ih_s7 --limit 3000 \
        --alphas 0 0.25 0.5 1 2 --json out/pub/beauty/alpha_ih_s7.json

A run trained with `model.item_head=true` ranks each user's candidates — the beam plus the item
head's top `model.item_head.widen` items — by log p_SID + α · log p_head (model/item_head.py).
α only re-weights scores that generation computes anyway, so one generation per split serves the
whole grid: `GPRModel.candidates` keeps the candidates' exact SID log-probabilities and their head
log-probabilities apart, and each α re-sorts them as `generate` would (`rank_candidates`).
α = 0 is the SID decoder alone (its beam, widened candidates scored by the decoder).
Valid: `--limit` sampled users, as training validates; test: every user.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gpr.core.config import GprConfig
from gpr.core.io import write_json
from gpr.core.metrics import retrieval_metrics
from gpr.core.runtime import set_threads
from gpr.model.gpr import GPRModel, rank_candidates
from gpr.model.journey import tail_windows
from gpr.model.prepare import eval_positions
from gpr.model.registry import load_run

KEYS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--limit", type=int, default=3000, help="valid users sampled (test: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    model, prep, info = load_run(args.run)
    if not isinstance(model, GPRModel) or model.item_head is None:
        raise SystemExit(f"{args.run}: not a GPR run with model.item_head=true")
    cfg = GprConfig.model_validate(info["config"])
    model.eval()
    items_all = prep.trie.items.numpy()
    beam, bs, max_len = cfg.train.beam, cfg.train.batch_size, model.cfg.max_len
    res: dict[str, dict[str, dict[str, float]]] = {}
    for split, limit in (("valid", args.limit), ("test", None)):
        pos = eval_positions(prep, split, limit, cfg.seed)
        ranked: dict[float, list[np.ndarray]] = {a: [] for a in args.alphas}
        targets = []
        for lo in range(0, len(pos), bs):
            wins = tail_windows(prep.journeys, pos[lo : lo + bs], max_len)
            b = prep.batch(wins, (0, 1, 2), max_len, model.cfg.thought_tokens)
            parts = model.candidates(b, prep.trie, beam)
            targets.append(b.targets[:, 0].numpy())
            for a in args.alphas:
                ranked[a].append(rank_candidates(parts, a, beam)[0].numpy())
        t = np.concatenate(targets)
        res[split] = {
            f"{a:g}": retrieval_metrics(np.concatenate(ranked[a]), t, items_all)
            for a in args.alphas
        }
        print(f"{split}: {len(pos)} users done", flush=True)
    best = max(args.alphas, key=lambda a: res["valid"][f"{a:g}"]["ndcg@10"])
    print(f"{args.run}: widen {model.cfg.item_head.widen}, α kept on valid N@10: {best:g}")
    print("| α | valid R@10 | valid N@10 | " + " | ".join(f"test {k}" for k in KEYS) + " |")
    print("|---|---|---|" + "---|" * len(KEYS))
    for a in args.alphas:
        v, te = res["valid"][f"{a:g}"], res["test"][f"{a:g}"]
        cells = [f"{v['recall@10']:.4f}", f"{v['ndcg@10']:.4f}"] + [f"{te[k]:.4f}" for k in KEYS]
        print(f"| {a:g}{' (kept)' if a == best else ''} | " + " | ".join(cells) + " |")
    if args.json:
        write_json(Path(args.json), {"run": args.run, "best_alpha": best, "metrics": res})


if __name__ == "__main__":
    main()

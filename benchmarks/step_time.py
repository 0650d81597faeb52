"""Training-step and generation time per model, one process alone on one device.

    python benchmarks/step_time.py --data out/pub/beauty/data \
        --sids out/pub/beauty/tok_balanced=true_collab-dim=64 --device cuda --batch 256 1024

Per model (GPR-1 as in public.md row 10, HSTU, TIGER, SASRec) and batch size: the median time of
one training step (forward, backward, AdamW) over `--steps` steps after `--warmup`, the step's
aten-op count (torch.profiler, one step), and beam-100 generation time per 1,000 validation users.
Times synchronise the device before each reading. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from gpr.core.config import load_config
from gpr.core.runtime import set_threads
from gpr.market.journeys import SPLIT_CODE
from gpr.model.journey import Batch, make_windows, positions_for_split
from gpr.model.prepare import eval_positions, prepare
from gpr.model.registry import build_model, model_config_for
from gpr.model.retrieve import evaluate

ROW10 = [
    "model.max_len=20",
    "model.content_input=true",
    "model.mtp_heads=1",
    "model.refining=false",
]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(
    name: str, data: Path, sids: Path, dev: torch.device, batch: int, steps: int, warmup: int
) -> dict[str, float]:
    cfg = load_config("small", overrides=ROW10, seed=7)
    mcfg = model_config_for(name, cfg.model)
    prep = prepare(data, sids, mcfg, cfg.tokenizer.codebook_size)
    j = prep.journeys
    wins = make_windows(j, mcfg.max_len, positions_for_split(j, prep.pred_mask, "train"))
    order = np.random.default_rng(7).permutation(len(wins))
    n_batches = max(1, len(wins) // batch)
    batches = [
        prep.batch(
            [wins[i] for i in order[(s % n_batches) * batch : (s % n_batches + 1) * batch]],
            (SPLIT_CODE["train"],),
            mcfg.max_len,
            mcfg.thought_tokens,
        )
        for s in range(warmup + steps)
    ]
    torch.manual_seed(7)
    model = build_model(prep, mcfg, name).to(dev)
    trie = prep.trie.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(b: Batch) -> None:
        loss = model.loss(b.to(dev), trie, None)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    times = []
    for i, b in enumerate(batches):
        _sync(dev)
        t0 = time.perf_counter()
        step(b)
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batches[-1])
    n_ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    pos = eval_positions(prep, "valid", 1000, 7)
    evaluate(model, prep, pos[:batch], 100, batch, dev)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    evaluate(model, prep, pos, 100, batch, dev)
    _sync(dev)
    gen_s = (time.perf_counter() - t0) * 1000 / len(pos)
    step_ms = 1000 * statistics.median(times)
    return {
        "step_ms": step_ms,
        "epoch_s": step_ms * len(wins) / batch / 1000,
        "ops": n_ops,
        "gen_s_per_1k": gen_s,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--sids", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=["gpr", "hstu", "tiger", "sasrec"])
    ap.add_argument("--batch", nargs="+", type=int, default=[256])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, {args.data}")
    print("| model | batch | params | step ms | epoch s | aten ops / step | gen s / 1k users |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        for batch in args.batch:
            r = measure(model, args.data, args.sids, dev, batch, args.steps, args.warmup)
            print(
                f"| {model} | {batch} | {r['params'] / 1e6:.2f} M | {r['step_ms']:.1f} "
                f"| {r['epoch_s']:.1f} | {r['ops']} | {r['gen_s_per_1k']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

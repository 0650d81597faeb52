"""MTP training speed: tokens/s, achieved FLOP/s and MFU, peak memory, per preset.

    python benchmarks/train_speed.py --data out/demo/world --sids out/demo/world_sids \
        --presets tiny small [--steps 20] [--threads 1] [--device auto]

For each preset: the model is built on the dataset as `gpr train` builds it, then `--warmup`
steps are taken untimed and `--steps` timed (forward, backward, clip, AdamW). Tokens are the
non-padding tokens of each batch. FLOPs are counted, not estimated: torch's FlopCounterMode over
one training step (the matmuls and attention of forward and backward). The peak that MFU
divides by is stated in the output:
- on CPU, the fp32 matmul throughput measured here, with the same threads
  (a 2048 x 2048 matmul, best of 5);
- on CUDA, the dense bf16 / fp32 datasheet peak of the GPU, when it is in PEAKS.
Memory: the process's peak RSS on CPU, torch's peak allocation on CUDA.
"""

from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from gpr.core.config import load_config
from gpr.core.runtime import set_threads, torch_device
from gpr.model.journey import SPLIT_CODE, make_windows, positions_for_split
from gpr.model.prepare import prepare
from gpr.model.registry import build_model, model_config_for

# dense datasheet peaks, FLOP/s (fp32 without tensor cores, bf16 with)
PEAKS = {"H100": {"fp32": 67e12, "bf16": 989e12}, "H200": {"fp32": 67e12, "bf16": 989e12}}


def cpu_peak(n: int = 2048) -> float:
    """Best fp32 matmul FLOP/s of 5 on this machine (the current torch threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def gpu_peak(dev: torch.device, bf16: bool) -> float | None:
    name = torch.cuda.get_device_name(dev)
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks["bf16" if bf16 else "fp32"]
    return None


def measure(preset: str, args: argparse.Namespace, dev: torch.device) -> dict[str, float | str]:
    cfg = load_config(preset, overrides=[f"seed={args.seed}"])
    mcfg = model_config_for("gpr", cfg.model)
    prep = prepare(args.data, args.sids, mcfg, cfg.tokenizer.codebook_size)
    j = prep.journeys
    windows = make_windows(j, mcfg.max_len, positions_for_split(j, prep.pred_mask, "train"))
    torch.manual_seed(args.seed)
    model = build_model(prep, mcfg).to(dev).train()
    trie = prep.trie.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    rng = np.random.default_rng(args.seed)
    bs = cfg.train.batch_size
    batches = []
    for _ in range(args.warmup + args.steps):
        pick = rng.choice(len(windows), min(bs, len(windows)), replace=False)
        b = prep.batch(
            [windows[i] for i in pick], (SPLIT_CODE["train"],), mcfg.max_len, mcfg.thought_tokens
        )
        batches.append(b.to(dev))

    def step(b: object) -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model.loss(b, trie)["loss"]  # type: ignore[arg-type]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step(batches[0])
    flops = counter.get_total_flops()
    for b in batches[1 : args.warmup]:
        step(b)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    tokens = 0
    t0 = time.perf_counter()
    for b in batches[args.warmup :]:
        step(b)
        tokens += int((b.ttype >= 0).sum())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    sec = time.perf_counter() - t0
    tok0 = int((batches[0].ttype >= 0).sum())
    achieved = flops / tok0 * tokens / sec
    peak = cpu_peak() if dev.type == "cpu" else gpu_peak(dev, args.bf16)
    mem = (
        torch.cuda.max_memory_allocated(dev) / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "preset": preset,
        "params (M)": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch": bs,
        "max_len": mcfg.max_len,
        "step ms": 1000 * sec / args.steps,
        "tokens/s": tokens / sec,
        "GFLOP/token": flops / tok0 / 1e9,
        "achieved TFLOP/s": achieved / 1e12,
        "peak TFLOP/s": (peak or float("nan")) / 1e12,
        "MFU %": 100 * achieved / peak if peak else float("nan"),
        "peak memory MiB": mem,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--sids", required=True)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    set_threads(args.threads)
    dev = torch_device(args.device)
    rows = [measure(p, args, dev) for p in args.presets]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    print(f"device {dev} ({where or platform.machine()}), threads {args.threads}, "
          f"bf16 {args.bf16}, commit {commit}")  # fmt: skip
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

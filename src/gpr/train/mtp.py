"""MTP pre-training (spec §4.1) of GPR and its baselines (HSTU, TIGER, SASRec), with validation.

gpr train --model gpr --data DIR --sids TOK --preset small --out RUN"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from gpr.core.config import GprConfig
from gpr.core.errors import GprInputError
from gpr.core.io import atomic_dir
from gpr.core.run import Run, seal
from gpr.core.runtime import set_threads, torch_device
from gpr.data.schema import load_dataset
from gpr.model.journey import (
    SPLIT_CODE,
    make_windows,
    positions_for_split,
    target_rows,
)
from gpr.model.prepare import Catalogue, Prepared, eval_positions, prepare, with_journeys
from gpr.model.registry import build_model, load_weights, model_config_for
from gpr.model.retrieve import evaluate
from gpr.train.checkpoint import Progress, load_checkpoint, remove_checkpoint, save_checkpoint
from gpr.train.distributed import World, data_parallel, finish, no_sync


def train(
    data_dir: str | Path,
    sids_dir: str | Path | None,
    cfg: GprConfig,
    out: str | Path,
    model_name: str = "gpr",
    progress: bool = True,
    init: str | Path | None = None,
    token_weight: Callable[[Prepared], np.ndarray] | None = None,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train with early stopping on the validation split; writes RUN atomically.

    init: a run to start from (its model and model config; VAFT). token_weight: builds a (T,)
    weight per journey token; each target's loss is weighted by its token's (VAFT's ω^V).
    MTP from scratch (no init, no token weight) checkpoints every `train.checkpoint_every` steps
    to RUN.ckpt; `resume` continues from there (`train.checkpoint`).
    """
    t0 = time.perf_counter()
    tc = cfg.train
    set_threads(cfg.runtime.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if init is not None:  # its model, model config and catalogue
        start = Run.load(init)
        model_name, mcfg = start.model, start.model_config
        prep = with_journeys(Catalogue.load(start.catalogue), load_dataset(data_dir), mcfg)
    else:
        if sids_dir is None:
            raise GprInputError("--sids TOK is required for generative models", field="sids")
        mcfg = model_config_for(model_name, cfg.model)
        prep = prepare(data_dir, sids_dir, mcfg, cfg.tokenizer.codebook_size)
    tok_w = token_weight(prep) if token_weight is not None else None
    dev = torch_device(tc.device)
    world = World.from_env(dev)
    j = prep.journeys
    train_pos = positions_for_split(j, prep.pred_mask, "train")
    windows = make_windows(j, mcfg.max_len, train_pos)
    valid_pos = eval_positions(prep, "valid", tc.max_eval_requests, cfg.seed)
    model = build_model(prep, mcfg, model_name)
    if init is not None:
        load_weights(model, Path(init))
    model = model.to(dev)
    trie = prep.trie.to(dev)
    step_loss = data_parallel(model, world)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    global_batch = tc.batch_size * world.size * tc.accumulate
    steps_per_epoch = math.ceil(len(windows) / global_batch)
    total_steps = steps_per_epoch * tc.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, tc.warmup_steps, total_steps)
    )
    monitor = "hitrate@100" if prep.engaged_only else "ndcg@10"
    checkpoints = init is None and token_weight is None and tc.checkpoint_every > 0
    checkpoints &= world.size == 1  # exact resume is a single-process guarantee
    command = {
        "stage": "mtp",
        "data": str(Path(data_dir).resolve()),
        "sids": str(Path(sids_dir).resolve()) if sids_dir is not None else None,
        "model": model_name,
        "config": cfg.model_dump(mode="json"),
    }
    stopped_by = "epochs"
    with atomic_dir(out) if world.main else scratch_dir() as tmp:
        at = Progress(best={monitor: -1.0})
        if resume:
            at = load_checkpoint(out, model, opt, sched, rng, tmp / "model.safetensors")
            with open(tmp / "metrics.jsonl", "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in at.log)
        for epoch in range(at.epoch, tc.epochs):
            model.train()
            if at.order is None or epoch != at.epoch:  # a fresh epoch (else: resumed inside it)
                at.order, at.step, at.losses = rng.permutation(len(windows)), 0, []
            at.epoch, order, losses = epoch, at.order, at.losses
            quiet = not (progress and sys.stderr.isatty())
            steps = range(at.step, steps_per_epoch)
            bar = tqdm(steps, desc=f"epoch {epoch}", disable=quiet, leave=False)
            for s in bar:
                mine = world.share(order[s * global_batch : (s + 1) * global_batch])
                micro = np.array_split(mine, tc.accumulate) if tc.accumulate > 1 else [mine]
                bs = [
                    prep.batch(
                        [windows[i] for i in part],
                        (SPLIT_CODE["train"],),
                        mcfg.max_len,
                        mcfg.thought_tokens,
                    )
                    for part in micro
                ]
                # each micro-batch's share of the global batch's predictions with a target
                ns = [int((b.target_codes[:, 0, 0] >= 0).sum()) for b in bs]
                scaled = world.size > 1 or tc.accumulate > 1
                total = world.total(sum(ns), dev) if scaled else 1
                opt.zero_grad(set_to_none=True)
                logged = []
                for m, (b, n) in enumerate(zip(bs, ns, strict=True)):
                    w = None
                    if tok_w is not None:
                        rows = target_rows(j, b.position.numpy(), mcfg.mtp_heads)
                        w = torch.from_numpy(tok_w[np.maximum(rows, 0)]).float().to(dev)
                    last = m == len(bs) - 1
                    with contextlib.nullcontext() if last else no_sync(step_loss):
                        parts = step_loss(b.to(dev), trie, w)
                        loss = parts["loss"]
                        if scaled:
                            loss = loss * (world.size * n / max(total, 1))
                        loss.backward()
                    logged.append({k: float(v.detach()) for k, v in parts.items()})
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                losses.append(logged[0] if len(logged) == 1 else weighted(logged, ns))
                bar.set_postfix(loss=f"{losses[-1]['loss']:.3f}")
                at.step = s + 1
                if checkpoints and sched.last_epoch % tc.checkpoint_every == 0:
                    best_file = tmp / "model.safetensors"
                    save_checkpoint(out, command, model, opt, sched, rng, at, best_file)
            row: dict[str, Any] = {
                "epoch": epoch,
                **{k: float(np.mean([x[k] for x in losses if k in x])) for k in losses[0]},
            }
            out_of_time = tc.max_seconds is not None and time.perf_counter() - t0 > tc.max_seconds
            if (epoch + 1) % tc.eval_every == 0 or epoch == tc.epochs - 1 or out_of_time:
                row["valid"] = evaluate(model, prep, valid_pos, tc.beam, tc.batch_size, dev)
                if row["valid"][monitor] > at.best[monitor]:
                    at.best = {**row["valid"], "epoch": epoch}
                    save_file(
                        {k: v.contiguous().cpu() for k, v in model.state_dict().items()},
                        str(tmp / "model.safetensors"),
                    )
                    at.bad_epochs = 0
                else:
                    at.bad_epochs += 1
            at.log.append(row)
            with open(tmp / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if progress and world.main:
                v = row.get("valid", {})
                print(
                    f"epoch {epoch}: loss {row['loss']:.4f} "
                    f"valid {monitor} {v.get(monitor, float('nan')):.4f}",
                    flush=True,
                )
            if at.bad_epochs >= tc.patience:
                stopped_by = "patience"
                break
            if out_of_time:
                stopped_by = "max_seconds"
                break
        summary = {
            "model": model_name,
            "data": str(Path(data_dir).resolve()),
            "sids": str(Path(sids_dir).resolve()) if sids_dir is not None else None,
            "config": cfg.model_dump(mode="json"),
            "model_config": mcfg.model_dump(mode="json"),
            "level_sizes": prep.level_sizes,
            "monitor": monitor,
            "best": at.best,
            "epochs_run": len(at.log),
            "stopped_by": stopped_by,
            "train_windows": len(windows),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - t0, 1),
            "device": str(dev),
            "processes": world.size,
            "stage": "mtp",
            **(meta or {}),
        }
        plot_losses(at.log, tmp / "loss.png")
        assert prep.catalogue is not None
        prep.catalogue.save(tmp)
        summary = seal(tmp, summary)
    if world.main:
        remove_checkpoint(out)
    finish(world)
    return summary


def weighted(rows: list[dict[str, float]], n: list[int]) -> dict[str, float]:
    """The mean of micro-batch loss rows, each weighted by its predictions."""
    total = max(sum(n), 1)
    return {
        k: sum(r.get(k, 0.0) * c for r, c in zip(rows, n, strict=True)) / total for k in rows[0]
    }


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """Where a process other than rank 0 writes what it would write (then thrown away)."""
    with tempfile.TemporaryDirectory(prefix="gpr-rank-") as d:
        yield Path(d)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def plot_losses(log: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [r["epoch"] for r in log]
    for k in sorted({k for r in log for k in r if k not in ("epoch", "valid")}):
        ax[0].plot(ep, [r.get(k, np.nan) for r in log], label=k)
    ax[0].set_xlabel("epoch")
    ax[0].set_title("training loss")
    ax[0].legend(fontsize=7)
    for k in ("recall@10", "ndcg@10", "hitrate@100"):
        ax[1].plot(ep, [r.get("valid", {}).get(k, np.nan) for r in log], label=k)
    ax[1].set_xlabel("epoch")
    ax[1].set_title("validation")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Exact resume of MTP training: everything the next step depends on, saved atomically.

    RUN.ckpt/
      state.safetensors   model weights, optimiser moments, torch's RNG state, the epoch's order
      state.json          the command (data, sids, model, config), data position (epoch, step),
                          scheduler, numpy RNG, the epoch's losses so far, the metrics log, the
                          best validation and patience count, the optimiser's other fields
      best.safetensors    the best weights so far (what the run will hold)

A checkpoint is written every `train.checkpoint_every` steps beside the output (`RUN.ckpt`), in a
temp directory renamed over the previous one, so a kill at any moment leaves the last whole one.
`gpr train --resume RUN` rebuilds the run's inputs from the command it holds, restores the state
and continues; the finished run is the one an uninterrupted run writes, bit for bit (CPU, the same
threads). It is removed once the run is written. Nothing is unpickled.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from gpr.core.errors import GprInputError
from gpr.core.io import read_json, read_tensors, remove_stale_temps, write_json

STATE, META, BEST = "state.safetensors", "state.json", "best.safetensors"
FORMAT = 1
META_KEYS = (
    "command",
    "epoch",
    "step",
    "losses",
    "log",
    "best",
    "bad_epochs",
    "scheduler",
    "numpy_rng",
    "param_groups",
    "opt_scalars",
)


def checkpoint_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


@dataclass
class Progress:
    """Where training is: the next step to take and what the run has recorded so far."""

    epoch: int = 0
    step: int = 0  # next step within the epoch
    order: np.ndarray | None = None  # the epoch's window permutation
    losses: list[dict[str, float]] = field(default_factory=list)  # this epoch's, so far
    log: list[dict[str, Any]] = field(default_factory=list)  # finished epochs' rows
    best: dict[str, Any] = field(default_factory=dict)
    bad_epochs: int = 0


def save_checkpoint(
    out: str | Path,
    command: dict[str, Any],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    rng: np.random.Generator,
    progress: Progress,
    best_weights: Path | None,
) -> None:
    """Write RUN.ckpt atomically (temp dir + rename; the previous one stays until then)."""
    final = checkpoint_dir(out)
    remove_stale_temps(final)  # of killed processes
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    tensors["torch_rng"] = torch.get_rng_state()
    if progress.order is not None:
        tensors["order"] = torch.from_numpy(np.asarray(progress.order, dtype=np.int64))
    save_file(tensors, str(tmp / STATE))
    write_json(
        tmp / META,
        {
            "format": FORMAT,
            "command": command,
            "epoch": progress.epoch,
            "step": progress.step,
            "losses": progress.losses,
            "log": progress.log,
            "best": progress.best,
            "bad_epochs": progress.bad_epochs,
            "scheduler": sched.state_dict(),
            "numpy_rng": rng.bit_generator.state,
            "param_groups": opt_state["param_groups"],
            "opt_scalars": scalars,
        },
    )
    if best_weights is not None and best_weights.is_file():
        shutil.copy2(best_weights, tmp / BEST)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def read_command(out: str | Path) -> dict[str, Any]:
    """The training command a checkpoint was written by (to rebuild its inputs)."""
    meta = _meta(checkpoint_dir(out))
    return dict(meta["command"])


def load_checkpoint(
    out: str | Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    rng: np.random.Generator,
    best_weights: Path,
) -> Progress:
    """Restore model, optimiser, scheduler and both RNGs in place; the best weights so far go to
    `best_weights`; returns where to continue."""
    ck = checkpoint_dir(out)
    meta = _meta(ck)
    t = read_tensors(ck / STATE)
    state = {k[len("model.") :]: v for k, v in t.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).splitlines()[0]
        raise GprInputError(f"the weights do not fit the model ({msg})", file=ck / STATE) from None
    per: dict[int, dict[str, Any]] = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            per.setdefault(int(pid), {})[name] = v
    for pid, extra in meta["opt_scalars"].items():
        per.setdefault(int(pid), {}).update(extra)
    opt.load_state_dict({"state": per, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    rng.bit_generator.state = meta["numpy_rng"]
    torch.set_rng_state(t["torch_rng"])
    if (ck / BEST).is_file():
        shutil.copy2(ck / BEST, best_weights)
    return Progress(
        epoch=int(meta["epoch"]),
        step=int(meta["step"]),
        order=t["order"].numpy() if "order" in t else None,
        losses=list(meta["losses"]),
        log=list(meta["log"]),
        best=dict(meta["best"]),
        bad_epochs=int(meta["bad_epochs"]),
    )


def _meta(ck: Path) -> dict[str, Any]:
    if not (ck / META).is_file():
        raise GprInputError(
            "no checkpoint to resume (training writes RUN.ckpt every train.checkpoint_every "
            "steps; it is removed once the run is complete)",
            file=ck,
        )
    meta = read_json(ck / META)
    if meta.get("format") != FORMAT:
        raise GprInputError(f"checkpoint format {meta.get('format')!r}, expected {FORMAT}", file=ck)
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise GprInputError("the checkpoint is incomplete", file=ck / META, field=missing[0])
    cmd = meta["command"]
    if not isinstance(cmd, dict) or cmd.get("stage") != "mtp" or "config" not in cmd:
        raise GprInputError("not an MTP training command", file=ck / META, field="command")
    return meta


def remove_checkpoint(out: str | Path) -> None:
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)

"""`gpr eval` of a generative run: Recall / NDCG@5,10 and HitRate@100 on a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpr.core.config import GprConfig
from gpr.core.errors import GprInputError
from gpr.core.runtime import torch_device
from gpr.model.journey import (
    SPLIT_CODE,
)
from gpr.model.prepare import eval_positions
from gpr.model.registry import load_run
from gpr.model.retrieve import evaluate


def evaluate_run(
    run_dir: str | Path,
    split: str,
    beam: int | None = None,
    limit: int | None = None,
    device: str = "auto",
    data: str | Path | None = None,
) -> dict[str, Any]:
    """`data`: the dataset to evaluate on (default: the one the run was trained on)."""
    if split not in SPLIT_CODE:
        raise GprInputError(f"unknown split '{split}'", field="split")
    model, prep, info = load_run(run_dir, data, "cpu")
    dev = torch_device(device)
    model = model.to(dev)
    cfg = GprConfig.model_validate(info["config"])
    pos = eval_positions(prep, split, limit, cfg.seed)
    out = evaluate(model, prep, pos, beam or cfg.train.beam, cfg.train.batch_size, dev)
    out.update(split=split, run=str(run_dir), model=info["model"])
    return out

"""The recommenders by name (gpr, hstu, tiger, sasrec): building one, loading its weights.

`hstu` is GPR with every HHD component off and one next-token head; `tiger` and `sasrec` are the
baselines of model/baselines/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from gpr.core.config import GprConfig, ModelConfig
from gpr.core.errors import GprInputError
from gpr.core.io import read_json
from gpr.core.runtime import torch_device
from gpr.model.baselines import TIGER, SASRec
from gpr.model.gpr import GPRModel
from gpr.model.prepare import Prepared, prepare

MODELS = ("gpr", "hstu", "tiger", "sasrec")
Recommender = GPRModel | TIGER | SASRec


def model_config_for(name: str, cfg: ModelConfig) -> ModelConfig:
    """`hstu`: the paper's baseline, every HHD component off and a single next-token head.

    `tiger` / `sasrec` get the same settings (they read only d_model, layers, heads, dropout and
    max_len; one head, so one next-item target per position).
    """
    if name not in MODELS:
        raise GprInputError(
            f"unknown model '{name}' (choose from {', '.join(MODELS)})", field="model"
        )
    if name == "gpr":
        return cfg
    return cfg.model_copy(
        update=dict(
            hybrid_attention=False,
            token_aware_ln=False,
            token_aware_ffn=False,
            mor_extra=0,
            thought_tokens=0,
            thinking_tokens=0,
            refining=False,
            hte=False,
            mtp_heads=1,
            mtp_weights=None,
        )
    )


def build_model(prep: Prepared, mcfg: ModelConfig, name: str = "gpr") -> Recommender:
    """GPRModel for gpr/hstu, else the named baseline."""
    if name == "tiger":
        return TIGER(mcfg, prep.sids.levels, prep.sids.codebook_size, prep.level_sizes[-1])
    if name == "sasrec":
        return SASRec(mcfg, len(prep.sids.codes))
    table = prep.thought_table if mcfg.thought_tokens > 0 else None
    return GPRModel(
        mcfg,
        prep.sids.levels,
        prep.sids.codebook_size,
        prep.level_sizes[-1],
        table,
        n_items=len(prep.sids.codes),
        content=prep.content_table,
    )


def load_run(
    run_dir: str | Path, device: str = "cpu"
) -> tuple[Recommender, Prepared, dict[str, Any]]:
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run.json")
    mcfg = ModelConfig.model_validate(info["model_config"])
    codebook = GprConfig.model_validate(info["config"]).tokenizer.codebook_size
    prep = prepare(info["data"], info["sids"], mcfg, codebook)
    model = build_model(prep, mcfg, info.get("model", "gpr"))
    load_weights(model, run_dir)
    return model.to(torch_device(device)), prep, info


OPTIONAL_KEYS = ("hte.critic",)  # added after MTP runs were first saved; HEPO trains them


def load_weights(model: torch.nn.Module, run_dir: Path) -> None:
    """Load RUN/model.safetensors; only keys in OPTIONAL_KEYS may be missing from older runs."""
    path = run_dir / "model.safetensors"
    if not path.exists():
        raise GprInputError("file not found (training stored no checkpoint)", file=path)
    res = model.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in res.missing_keys if not k.startswith(OPTIONAL_KEYS)]
    if missing or res.unexpected_keys:
        bad = (missing or res.unexpected_keys)[0]
        raise GprInputError(
            f"checkpoint does not fit the model ({len(missing)} missing, "
            f"{len(res.unexpected_keys)} unexpected tensors)",
            file=path,
            field=bad,
        )

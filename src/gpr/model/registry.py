"""The recommenders by name (gpr, hstu, tiger, sasrec): building one, loading its weights.

`hstu` is GPR with every HHD component off and one next-token head; `tiger` and `sasrec` are the
baselines of model/baselines/."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from gpr.core.config import GprConfig, ModelConfig, model_overrides
from gpr.core.errors import GprInputError
from gpr.core.io import atomic_dir, read_json, read_tensors
from gpr.core.run import INFO, MANIFEST, Run, seal, upgrade_info
from gpr.core.runtime import torch_device
from gpr.data.schema import load_dataset
from gpr.model.baselines import TIGER, SASRec
from gpr.model.gpr import GPRModel
from gpr.model.prepare import Catalogue, Prepared, with_journeys

MODELS = ("gpr", "hstu", "tiger", "sasrec")
Recommender = GPRModel | TIGER | SASRec


def model_config_for(name: str, cfg: ModelConfig) -> ModelConfig:
    """The model section for `name`: GPR's as it is; the baselines' from their config files
    (gpr/configs/models/NAME.yaml: the fields each one sets over the preset's)."""
    if name not in MODELS:
        raise GprInputError(
            f"unknown model '{name}' (choose from {', '.join(MODELS)})", field="model"
        )
    if name == "gpr":
        return cfg
    return ModelConfig.model_validate({**cfg.model_dump(), **model_overrides(name)})


def build_model(cat: Catalogue | Prepared, mcfg: ModelConfig, name: str = "gpr") -> Recommender:
    """GPRModel for gpr/hstu, else the named baseline, sized by the catalogue."""
    if name == "tiger":
        return TIGER(mcfg, cat.sids.levels, cat.sids.codebook_size, cat.level_sizes[-1])
    if name == "sasrec":
        return SASRec(mcfg, len(cat.sids.codes))
    table = cat.thought_table if mcfg.thought_tokens > 0 else None
    return GPRModel(
        mcfg,
        cat.sids.levels,
        cat.sids.codebook_size,
        cat.level_sizes[-1],
        table,
        content=cat.content_table,
    )


def load_model(run: Run, device: str = "cpu") -> tuple[Recommender, Catalogue]:
    """A generative run's model and catalogue, from the run directory alone."""
    if run.model not in MODELS:
        raise GprInputError(
            f"not a generative run (model {run.model!r})", file=run.path / "run.json", field="model"
        )
    cat = Catalogue.load(run.catalogue)
    model = build_model(cat, run.model_config, run.model)
    load_weights(model, run.path)
    return model.to(torch_device(device)), cat


def load_run(
    run_dir: str | Path, data_dir: str | Path | None = None, device: str = "cpu"
) -> tuple[Recommender, Prepared, dict[str, Any]]:
    """A generative run with the journeys of `data_dir` (default: the dataset it was trained on)."""
    run = Run.load(run_dir)
    model, cat = load_model(run, device)
    prep = with_journeys(cat, load_dataset(run.data(data_dir)), run.model_config)
    return model, prep, run.info


OPTIONAL_KEYS = ("hte.critic",)  # added after MTP runs were first saved; HEPO trains them


def load_weights(model: torch.nn.Module, run_dir: Path) -> None:
    """Load RUN/model.safetensors; only keys in OPTIONAL_KEYS may be missing from older runs."""
    path = run_dir / "model.safetensors"
    if not path.exists():
        raise GprInputError("file not found (training stored no checkpoint)", file=path)
    res = model.load_state_dict(read_tensors(path), strict=False)
    missing = [k for k in res.missing_keys if not k.startswith(OPTIONAL_KEYS)]
    if missing or res.unexpected_keys:
        bad = (missing or res.unexpected_keys)[0]
        raise GprInputError(
            f"checkpoint does not fit the model ({len(missing)} missing, "
            f"{len(res.unexpected_keys)} unexpected tensors)",
            file=path,
            field=bad,
        )


def convert_run(
    old: str | Path, out: str | Path, data: str | Path | None = None, sids: str | Path | None = None
) -> dict[str, Any]:
    """A run of the layout before manifest.json -> the current layout in `out`: its files, plus
    for a generative run the catalogue rebuilt from its dataset and SIDs (or `data` / `sids`)."""
    old = Path(old)
    if (old / MANIFEST).is_file():
        raise GprInputError("already in the current layout (it has manifest.json)", file=old)
    if not (old / INFO).is_file():
        raise GprInputError("not a run directory (no run.json)", file=old)
    info = upgrade_info(read_json(old / INFO))
    with atomic_dir(out, overwrite=False) as tmp:
        for f in old.iterdir():
            if f.is_file() and f.name != INFO:
                shutil.copy2(f, tmp / f.name)
        if info.get("model") in MODELS:
            data_dir = Path(data if data is not None else info["data"]).resolve()
            sids_dir = Path(sids if sids is not None else info["sids"]).resolve()
            codebook = GprConfig.model_validate(info["config"]).tokenizer.codebook_size
            mcfg = ModelConfig.model_validate(info["model_config"])
            Catalogue.build(load_dataset(data_dir), sids_dir, mcfg, codebook).save(tmp)
            info.update(data=str(data_dir), sids=str(sids_dir))
        info = seal(tmp, {**info, "converted_from": str(old.resolve())})
    return info

"""A run: the directory that holds everything needed to use a trained model, and its one loader.

    RUN/
      run.json             what was trained and how: model, stage, config, model_config, metrics
      manifest.json        the layout's format version and the SHA-256 of every other file
      model.safetensors    weights (a cascade run: ranking.safetensors, retrieval.safetensors)
      catalogue/           generative runs: the semantic IDs with their tokenizer (sids.parquet,
                           tokenizer.json) and catalogue.safetensors (content table, thought-token
                           table, item topics), so loading reads no dataset and recomputes nothing
      metrics.jsonl, loss.png

`Run.load(path)` checks the format and every hash; what to do with the weights is the model's
(gpr.model.registry) or the cascade's (gpr.cascade.load) business. Runs of the layout before this
one (no manifest.json) are refused with the converter's command: `gpr run convert`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gpr.core.config import ModelConfig, error_line, upgrade
from gpr.core.errors import GprInputError
from gpr.core.io import file_sha256, read_json, write_json

FORMAT_VERSION = 1
INFO = "run.json"
MANIFEST = "manifest.json"
CATALOGUE = "catalogue"
UNHASHED = (INFO, MANIFEST, "metrics.jsonl", "loss.png")  # metadata, not what the model uses


def _hashed_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in UNHASHED
    )


def seal(tmp: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Finish a run being written in `tmp`: run.json, then the manifest over every other file."""
    info = {**info, "format": FORMAT_VERSION}
    write_json(tmp / INFO, info)
    files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in _hashed_files(tmp)}
    write_json(tmp / MANIFEST, {"format": FORMAT_VERSION, "files": files})
    return info


def upgrade_info(info: dict[str, Any]) -> dict[str, Any]:
    """run.json written by an earlier gpr in the current config schema (`core.config.upgrade`):
    `config` (a cascade run's is its cascade section) and `model_config`."""
    out = dict(info)
    if isinstance(out.get("config"), dict):
        if out.get("model") == "cascade":
            out["config"] = upgrade({"cascade": out["config"]})["cascade"]
        else:
            out["config"] = upgrade(out["config"])
    if isinstance(out.get("model_config"), dict):
        out["model_config"] = upgrade({"model": out["model_config"]})["model"]
    return out


def copy_catalogue(run: str | Path, tmp: Path) -> None:
    """Copy a run's catalogue into a run being written (stages that start from `run`)."""
    src = Path(run) / CATALOGUE
    if not src.is_dir():
        raise GprInputError("the run has no catalogue/", file=run)
    shutil.copytree(src, tmp / CATALOGUE)


@dataclass(frozen=True)
class Run:
    path: Path
    info: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Run:
        """The run at `path`; with `verify`, every file is checked against the manifest."""
        path = Path(path)
        if not (path / INFO).is_file():
            raise GprInputError("not a run directory (no run.json)", file=path)
        info = read_json(path / INFO)
        if not (path / MANIFEST).is_file():
            raise GprInputError(
                "a run of the earlier layout (no manifest.json); convert it with "
                f"`gpr run convert --run {path} --out NEW_RUN [--data DIR --sids TOK]`",
                file=path,
            )
        manifest = read_json(path / MANIFEST)
        if manifest.get("format") != FORMAT_VERSION or not isinstance(manifest.get("files"), dict):
            raise GprInputError(
                f"unknown run format {manifest.get('format')!r} (this gpr reads {FORMAT_VERSION})",
                file=path / MANIFEST,
                field="format",
            )
        if verify:
            for name, sha in manifest["files"].items():
                f = path / name
                if not f.is_file():
                    raise GprInputError("file listed in the manifest is missing", file=f)
                if file_sha256(f) != sha:
                    raise GprInputError("file does not match its manifest hash", file=f)
        return cls(path, upgrade_info(info))

    @property
    def model(self) -> str:
        return str(self.info.get("model", "gpr"))

    @property
    def model_config(self) -> ModelConfig:
        if "model_config" not in self.info:
            raise GprInputError("missing field", file=self.path / INFO, field="model_config")
        try:
            return ModelConfig.model_validate(self.info["model_config"])
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(["model_config", *(str(p) for p in err["loc"])])
            raise GprInputError(error_line(err), file=self.path / INFO, field=loc) from None

    @property
    def catalogue(self) -> Path:
        return self.path / CATALOGUE

    def data(self, override: str | Path | None = None) -> Path:
        """The dataset to read: `override` (`--data`), else the one the run was trained on."""
        if override is not None:
            return Path(override)
        if "data" not in self.info:
            raise GprInputError("the run names no dataset; pass --data DIR", file=self.path)
        return Path(self.info["data"])

"""A trained cascade run loaded from its directory: config, catalogue, ranking and retrieval."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpr.cascade.config import CascadeConfig
from gpr.cascade.features import Catalog
from gpr.cascade.ranking import RankingModel
from gpr.cascade.retrieval import RetrievalModel
from gpr.core.errors import GprInputError
from gpr.core.io import file_sha256, read_tensors
from gpr.core.run import Run
from gpr.market.journeys import LogData


@dataclass
class Cascade:
    cfg: CascadeConfig
    cat: Catalog
    ranking: RankingModel
    retrieval: RetrievalModel
    meta: dict[str, object]


RETIRED_TENSORS = ("emb.user_id.",)


def load_cascade(run_dir: Path, logs: LogData) -> Cascade:
    meta = Run.load(run_dir).info
    if meta.get("model") != "cascade":
        raise GprInputError("not a cascade run", file=run_dir / "run.json", field="model")
    sha = file_sha256(logs.root / "items.parquet")
    if meta.get("items_sha256") != sha:
        raise GprInputError(
            f"run was trained on another catalog than {logs.root}",
            file=run_dir / "run.json",
            field="items_sha256",
        )
    # runs saved before an option existed load with the behaviour they were trained with
    legacy = {
        "session_topics": False,
        "topic_prior_strength": 1.0,
        "topic_half_life_days": 0.0,
        "session_gap_seconds": 0,
    }
    cfg = CascadeConfig.model_validate({**legacy, **meta["config"]})
    cat = Catalog.from_logs(logs, cfg)
    ranking = RankingModel(cat, cfg)
    retrieval = RetrievalModel(cat, cfg)
    for model, name in ((ranking, "ranking"), (retrieval, "retrieval")):
        path = run_dir / f"{name}.safetensors"
        if not path.exists():
            raise GprInputError("file not found", file=path)
        state = read_tensors(path)
        # runs saved before cascade.user_id was retired hold its (unused) table
        state = {k: v for k, v in state.items() if not k.startswith(RETIRED_TENSORS)}
        model.load_state_dict(state)
        model.eval()
    ranking.deep = bool(meta.get("ranking_deep", cfg.deep))
    return Cascade(cfg, cat, ranking, retrieval, meta)

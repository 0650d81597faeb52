"""The cascade as a policy: retrieval (exact top-k over the eligible ads) -> ranking -> auction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from gpr.errors import GprInputError
from gpr.eval.history import LogData
from gpr.eval.policy import Ranked, RequestBatch
from gpr.io import file_sha256, read_json
from gpr.threads import limit_threads
from gpr.train.cascade.auction import run_auction
from gpr.train.cascade.config import CascadeConfig
from gpr.train.cascade.features import Catalog, request_features
from gpr.train.cascade.ranking import RankingModel
from gpr.train.cascade.retrieval import RetrievalModel


@dataclass
class Cascade:
    cfg: CascadeConfig
    cat: Catalog
    ranking: RankingModel
    retrieval: RetrievalModel
    meta: dict[str, object]


def load_cascade(run_dir: Path, logs: LogData) -> Cascade:
    meta = read_json(run_dir / "run.json")
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
    n_users = int(meta["n_users"])
    ranking = RankingModel(cat, n_users, cfg)
    retrieval = RetrievalModel(cat, n_users, cfg)
    for model, name in ((ranking, "ranking"), (retrieval, "retrieval")):
        path = run_dir / f"{name}.safetensors"
        if not path.exists():
            raise GprInputError("file not found", file=path)
        model.load_state_dict(load_file(str(path)))
        model.eval()
    ranking.deep = bool(meta.get("ranking_deep", cfg.deep))
    return Cascade(cfg, cat, ranking, retrieval, meta)


class CascadePolicy:
    """retrieval top-k (k = cfg.retrieval_k) over the eligible ads, pCTR / pCVR ranking, eCPM
    auction; returns the top M by eCPM with value = eCPM / 1000 (expected revenue)."""

    def __init__(self, run_dir: str | Path, data_dir: str | Path, logs: LogData | None = None):
        self.name = "cascade"
        self.logs = logs if logs is not None else LogData.load(data_dir)
        self.c = load_cascade(Path(run_dir), self.logs)
        with torch.no_grad():
            self.ad_vec = self.c.retrieval.ad_vec(torch.arange(self.logs.ads.n))

    def rank(self, batch: RequestBatch) -> Ranked:
        with limit_threads(self.c.cfg.threads), torch.no_grad():
            return self._rank(batch)

    def _rank(self, batch: RequestBatch) -> Ranked:
        cfg = self.c.cfg
        b, a = batch.eligible.shape
        if a != self.logs.ads.n:
            raise GprInputError("batch ads do not match the cascade's catalog", field="eligible")
        req = request_features(
            batch.journeys,
            batch.users,
            self.c.cat,
            batch.pos,
            cfg.n_hist_organic,
            cfg.n_hist_ads,
            cfg.n_long,
        )
        r = req.tensors()
        # retrieval: exact top-k over the eligible ads
        score = self.c.retrieval.user_vec(r) @ self.ad_vec.T
        score = score.masked_fill(~torch.from_numpy(batch.eligible), float("-inf"))
        k = min(cfg.retrieval_k, a)
        top, cand = torch.topk(score, k, dim=1)
        valid = torch.isfinite(top).numpy()
        # ranking
        s = self.c.ranking.request_state(r)
        c, v = self.c.ranking(s, cand)
        pctr, pcvr = torch.sigmoid(c).numpy(), torch.sigmoid(v).numpy()
        cand_np = cand.numpy()
        res = run_auction(batch.ads.bid[cand_np], pctr, pcvr, valid)
        m = min(batch.m, k)
        idx = np.take_along_axis(cand_np, res.order[:, :m], axis=1)
        ok = np.isfinite(res.ecpm[:, :m])
        ads = np.full((b, batch.m), -1, dtype=np.int64)
        val = np.full((b, batch.m), np.nan)
        ads[:, :m] = np.where(ok, batch.ads.item_id[idx], -1)
        val[:, :m] = np.where(ok, res.ecpm[:, :m] / 1000.0, np.nan)
        return Ranked(ads, val)

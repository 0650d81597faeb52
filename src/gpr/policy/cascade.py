"""The cascade as a policy: retrieval (exact top-k over the eligible ads) -> ranking -> auction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gpr.cascade.auction import run_auction
from gpr.cascade.features import request_features
from gpr.cascade.load import load_cascade
from gpr.core.errors import GprInputError
from gpr.market.journeys import LogData
from gpr.market.policy import Ranked, RequestBatch


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
        with torch.no_grad():
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

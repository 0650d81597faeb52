"""The RL simulator (spec §1.3): the cascade's learned, frozen ranking models score any ad.

The paper's "copied production ranking models": pCTR and pCVR come from the cascade's ranking
model trained on the logs (`gpr train --model cascade`), never from the hidden truth, so value
alignment cannot cheat; only `gpr simulate` reads the truth.

    sim = Simulator(CASCADE_RUN, DATA_DIR)
    s = sim.score(request_ids, ad_item_ids)       # (B,) and (B, K) -> Scores of shape (B, K)
    s.value                                       # final_value = bid x pCTR x pCVR (Eq. 5)

Decision (Eq. 5): final_value = eCPM / 1000 = bid x pCTR x pCVR, the expected revenue of an
impression under oCPA billing; the auction's and the replay's currency. A synthetic (ARR) request
reuses a real request's history and replaces its environment (scene, slot, device, hour).

Support (`score(..., support=True)`, read by experiments/stages/simulator_gap.py): the ranking
model was trained only on ads the logging cascade showed, i.e. ads its retrieval found relevant;
on other ads it is badly optimistic (seed 7: 4-7x the true value on random eligible ads,
calibrated on logged ones, docs/results/stages.md). The copied cascade ranks only what its own
retrieval returns, so an ad outside the retrieval model's top `retrieval_k` of the request's
eligible ads is worth 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpr.cascade.features import ENV_SIZES, request_features
from gpr.cascade.load import load_cascade
from gpr.core.errors import GprInputError
from gpr.market.ads import eligible_mask
from gpr.market.journeys import LogData


@dataclass
class Scores:
    pctr: np.ndarray  # (B, K), 0 where the item is not an ad
    pcvr: np.ndarray
    value: np.ndarray  # bid x pCTR x pCVR (0 outside the support when it is asked for)
    support: np.ndarray  # (B, K) bool: inside the retrieval's top-k (all True when not asked)


class Simulator:
    def __init__(self, cascade_run: str | Path, data_dir: str | Path, logs: LogData | None = None):
        run = Path(cascade_run)
        if not (run / "run.json").exists():
            raise GprInputError("not a cascade run (no run.json)", file=run, field="simulator")
        self.logs = logs if logs is not None else LogData.load(data_dir)
        self.c = load_cascade(run, self.logs)
        self.run = run
        with torch.no_grad():
            self.ad_vec = self.c.retrieval.ad_vec(torch.arange(self.logs.ads.n))

    @torch.no_grad()
    def score(
        self,
        request_ids: np.ndarray,
        items: np.ndarray,
        env: np.ndarray | None = None,
        support: bool = False,
        chunk: int = 2048,
    ) -> Scores:
        """pCTR, pCVR and final_value of ad `items` (B, K) for each request (B,).

        env (B, 4): scene, slot, device, hour replacing the request's own (ARR); -1 keeps it.
        support: value 0 outside the retrieval's top-k eligible ads (see the module docstring).
        """
        items = np.asarray(items, dtype=np.int64)
        if items.ndim != 2 or len(items) != len(request_ids):
            raise GprInputError("items must be (B, K) for B requests", field="items")
        out = [np.zeros(items.shape) for _ in range(3)] + [np.ones(items.shape, dtype=bool)]
        for lo in range(0, len(items), chunk):
            sl = slice(lo, lo + chunk)
            e = None if env is None else env[sl]
            parts = self._score(np.asarray(request_ids)[sl], items[sl], e, support)
            for k, v in enumerate(parts):
                out[k][sl] = v
        return Scores(*out)

    def _score(
        self, request_ids: np.ndarray, items: np.ndarray, env: np.ndarray | None, support: bool
    ) -> tuple[np.ndarray, ...]:
        logs, cfg = self.logs, self.c.cfg
        pos = logs.journeys.positions(request_ids)
        req = request_features(
            logs.journeys,
            logs.users,
            self.c.cat,
            pos,
            cfg.n_hist_organic,
            cfg.n_hist_ads,
            cfg.n_long,
        )
        if env is not None:
            new = np.stack([env[:, 0] + 1, env[:, 1], env[:, 2] + 1, env[:, 3] + 1], 1)
            new = np.clip(new, 0, np.asarray(ENV_SIZES) - 1)
            req.env = np.where(env >= 0, new, req.env)
        a = logs.ads.index_of(items)
        ok = a >= 0
        r = req.tensors()
        s = self.c.ranking.request_state(r)
        c, v = self.c.ranking(s, torch.from_numpy(np.maximum(a, 0)))
        pctr = np.where(ok, torch.sigmoid(c).numpy(), 0.0)
        pcvr = np.where(ok, torch.sigmoid(v).numpy(), 0.0)
        bid = np.where(ok, logs.ads.bid[np.maximum(a, 0)], 0.0)
        inside = np.ones(items.shape, dtype=bool)
        if support:
            j = logs.journeys
            score = self.c.retrieval.user_vec(r) @ self.ad_vec.T  # (B, A)
            elig = eligible_mask(logs.ads, logs.users, j.user[pos], j.day[pos])
            score = score.masked_fill(~torch.from_numpy(elig), float("-inf"))
            kth = score.topk(min(cfg.retrieval_k, score.shape[1]), dim=1).values[:, -1:]
            mine = score.gather(1, torch.from_numpy(np.maximum(a, 0)))
            inside = ok & (mine >= kth).numpy() & np.isfinite(mine.numpy())
        return pctr, pcvr, np.where(inside, bid * pctr * pcvr, 0.0), inside

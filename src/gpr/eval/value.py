"""`gpr eval --run RUN --value`: the Table-3 analogue (spec §6) over K candidates per request.

For each test request the policy samples K = 40 candidates inside the request's eligible-ad trie
(duplicates dropped) and orders them by its path log-probability. Their *true* values (the hidden
truth: bid x pCTR x pCVR) are min-max normalised per request over all the ads eligible for it, so
1 is the best ad the request could have had and 0 the worst. Keys:
- `ndcg_value`: nDCG of the policy's order with the normalised true values as gains (requests
  whose candidates are all worth the same are left out);
- `opr`: the share of candidate pairs (of different true value) the policy orders as the truth;
- `avg_final_value` / `max_final_value`: mean / max normalised true value of the K, averaged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpr.core.config import GprConfig
from gpr.core.errors import GprInputError
from gpr.eval.simulate import SimData
from gpr.market.journeys import LogData
from gpr.market.policy import RequestBatch
from gpr.model.gpr import GPRModel
from gpr.model.journey import SPLIT_CODE, positions_for_split
from gpr.model.registry import load_run
from gpr.policy.builtins import Oracle
from gpr.policy.rollout import level_dists, sample, servable, taken


def ndcg_value(scores: np.ndarray, gains: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B,) nDCG of ordering each row by `scores` with `gains` (>= 0); invalid entries ignored.
    NaN where no ordering can matter (all gains 0: e.g. one eligible ad, or all of equal value)."""
    s = np.where(valid, scores, -np.inf)
    g = np.where(valid, gains, 0.0)
    disc = 1.0 / np.log2(np.arange(2, s.shape[1] + 2))
    dcg = (np.take_along_axis(g, np.argsort(-s, axis=1, kind="stable"), 1) * disc).sum(1)
    idcg = (-np.sort(-g, axis=1) * disc).sum(1)
    return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


def opr(scores: np.ndarray, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B,) share of valid pairs with different values that `scores` orders like `values`
    (NaN where a row has no such pair; a score tie counts half)."""
    ds = scores[:, :, None] - scores[:, None, :]
    dv = values[:, :, None] - values[:, None, :]
    pair = valid[:, :, None] & valid[:, None, :] & (dv > 0)
    agree = np.where(ds > 0, 1.0, np.where(ds == 0, 0.5, 0.0))
    n = pair.sum((1, 2))
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, (agree * pair).sum((1, 2)) / np.maximum(n, 1), np.nan)


def value_eval(
    run_dir: str | Path,
    split: str = "test",
    k: int = 40,
    limit: int | None = 2000,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    if split not in SPLIT_CODE:
        raise GprInputError(f"unknown split '{split}' (train | valid | test)", field="split")
    model, prep, info = load_run(run_dir, data_dir)
    if not isinstance(model, GPRModel):
        raise GprInputError("--value needs a gpr/hstu run", file=run_dir, field="model")
    model.eval()
    data = SimData.load(data_dir if data_dir is not None else info["data"])
    logs: LogData = data.logs
    rng = np.random.default_rng(seed)
    pos = positions_for_split(prep.journeys, prep.pred_mask, split)
    if limit is not None and len(pos) > limit:
        pos = np.sort(rng.choice(pos, limit, replace=False))
    oracle = Oracle(data.truth)
    gen = torch.Generator().manual_seed(seed)
    rows: dict[str, list[np.ndarray]] = {key: [] for key in ("ndcg", "opr", "avg", "max")}
    batch = GprConfig.model_validate(info["config"]).train.batch_size
    for lo in range(0, len(pos), batch):
        ids = prep.journeys.request[pos[lo : lo + batch]]
        req = servable(RequestBatch.of(ids, logs.journeys, logs.ads, logs.users))
        if not len(req):
            continue
        b = prep.at_batch(req, model.cfg.max_len, model.cfg.thought_tokens)
        counts = prep.trie.eligible_counts(prep.trie_eligible(req))
        with torch.no_grad():
            roll = sample(model, b, prep.trie, counts, k, gen=gen)
            lp = taken(level_dists(model, b, prep.trie, counts, roll)[0], roll.codes).sum(1)
        # (B, K) grids of candidates: their item, log-prob, and whether they are a first occurrence
        nb = len(req)
        order = np.lexsort((np.arange(len(roll)), roll.req.numpy()))
        item = roll.item.numpy()[order].reshape(nb, k)
        score = lp.numpy()[order].reshape(nb, k)
        first = np.ones_like(item, dtype=bool)
        for c in range(1, k):  # K is small: mark repeats of an earlier candidate
            first[:, c] = (item[:, c : c + 1] != item[:, :c]).all(1)
        # true values, normalised over each request's eligible ads
        true_all = oracle.true_values(req)  # (B, A)
        e_ads = np.where(req.eligible, true_all, np.nan)
        vmin, vmax = np.nanmin(e_ads, 1), np.nanmax(e_ads, 1)
        tv = true_all[np.arange(nb)[:, None], logs.ads.index_of(item)]
        norm = (tv - vmin[:, None]) / np.maximum(vmax - vmin, 1e-12)[:, None]
        rows["ndcg"].append(ndcg_value(score, norm, first))
        rows["opr"].append(opr(score, tv, first))
        rows["avg"].append(np.nanmean(np.where(first, norm, np.nan), 1))
        rows["max"].append(np.where(first, norm, -np.inf).max(1))
    cat = {key: np.concatenate(v) if v else np.zeros(0) for key, v in rows.items()}
    return {
        "ndcg_value": float(np.nanmean(cat["ndcg"])),
        "opr": float(np.nanmean(cat["opr"])),
        "avg_final_value": float(np.mean(cat["avg"])),
        "max_final_value": float(np.mean(cat["max"])),
        "n_requests": len(cat["ndcg"]),
        "k": k,
        "split": split,
        "run": str(run_dir),
        "stage": info.get("stage", "mtp"),
    }

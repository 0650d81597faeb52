"""A trained generative run (GPR, HSTU, TIGER, SASRec) as a policy of the true-world replay.

For each request the model reads the journey up to (and including) the request's E token, then
decodes inside the trie of the ads eligible for that request; every generated ad exists and may be
shown. The union of the MTP heads' beams is ranked by the run's `serve.rank_by`: `logprob` (the
path log-probability, plus `serve.bid_weight` x log bid and `serve.hte_weight` x log HTE value)
or `value` (bid x HTE pCTR x HTE pCVR alone, the model's own auction: spec §5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gpr.config import serve_config
from gpr.errors import GprInputError
from gpr.eval.eligibility import LOG_BID_CENTRE, LOG_PRICE_CENTRE, Ads
from gpr.eval.policy import Ranked, RequestBatch
from gpr.eval.simulate import NEW_AD_DAYS
from gpr.model.gpr import GPRModel
from gpr.model.hte import SIDE_FEATURES
from gpr.model.journey import Batch, E, I
from gpr.train.mtp import load_run


def ad_bids(items: torch.Tensor, ads: Ads) -> torch.Tensor:
    """Bid of each ad item id (0 for -1 and unknown ids)."""
    a = ads.index_of(items.numpy())
    return torch.from_numpy(np.where(a >= 0, ads.bid[np.maximum(a, 0)], 0.0)).float()


def hte_side_features(b: Batch, items: torch.Tensor, ads: Ads, days: np.ndarray) -> torch.Tensor:
    """(P, N, len(SIDE_FEATURES)) side features of candidate ad ids `items` (P, N) for the
    predictions of `b` on `days` (P,); rows of -1 / unknown items are 0."""
    a = ads.index_of(items.numpy())
    ok = a >= 0
    a0 = np.maximum(a, 0)
    lp = np.where(ok, np.log(ads.price[a0]) - LOG_PRICE_CENTRE, 0.0)
    age = np.clip(np.asarray(days)[:, None] - ads.created_day[a0], 0, None)
    hist = b.item[b.pred_b].numpy()
    ha = ads.index_of(hist)
    before = np.arange(hist.shape[1])[None, :] < b.pred_t.numpy()[:, None]
    h_ok = (ha >= 0) & before & (b.ttype[b.pred_b].numpy() == I)
    n_h = h_ok.sum(1)
    h_lp = np.where(h_ok, np.log(ads.price[np.maximum(ha, 0)]) - LOG_PRICE_CENTRE, 0.0).sum(
        1
    ) / np.maximum(n_h, 1)
    cols = {
        "log_price": lp,
        "log_bid": np.where(ok, np.log(ads.bid[a0]) - LOG_BID_CENTRE, 0.0),
        "new_ad": age <= NEW_AD_DAYS,
        "log_age": np.log1p(age),
        "user_log_price": np.broadcast_to(h_lp[:, None], lp.shape),
        "user_has_ads": np.broadcast_to((n_h > 0)[:, None], lp.shape),
        "price_match": h_lp[:, None] * lp,
    }
    x = np.stack([np.where(ok, cols[k], 0.0) for k in SIDE_FEATURES], -1)
    return torch.from_numpy(x).float()


def bid_tilted(
    items: torch.Tensor, logp: torch.Tensor, bid: torch.Tensor, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank (B, N) candidates by log p + weight x log bid (p x bid^w: the imitation prior,
    bid-aware); -1 items go last."""
    score = torch.where(items >= 0, logp + weight * bid.clamp(min=1e-12).log(), -torch.inf)
    order = score.argsort(dim=1, descending=True, stable=True)
    return items.gather(1, order), score.gather(1, order)


class GenerativePolicy:
    def __init__(
        self,
        run_dir: Path,
        data_dir: Path,
        beam: int | None = None,
        rank_by: str | None = None,
        overrides: list[str] | None = None,
    ) -> None:
        """`overrides`: `serve.field=value` items over the run's serve section."""
        self.model, self.prep, info = load_run(run_dir)
        self.model.eval()
        serve = serve_config(info["config"], overrides)
        self.rank_by = rank_by or serve.rank_by
        if self.rank_by not in ("logprob", "value"):
            raise GprInputError(f"unknown ranking '{self.rank_by}'", field="serve.rank_by")
        by_logp = self.rank_by == "logprob"
        self.bid_weight = serve.bid_weight if by_logp else 0.0
        self.hte_weight = serve.hte_weight if by_logp else 0.0
        if (self.rank_by == "value" or self.hte_weight) and not (
            isinstance(self.model, GPRModel) and self.model.hte is not None
        ):
            raise GprInputError("ranking by value needs a run with HTE", file=run_dir, field="hte")
        suffix = "+value" if self.rank_by == "value" else ""
        suffix += f"+bid{self.bid_weight:g}" if self.bid_weight else ""
        suffix += f"+hte{self.hte_weight:g}" if self.hte_weight else ""
        self.name = f"{info['model']}:{Path(run_dir).name}{suffix}"
        self.beam = beam or serve.beam or int(info["config"]["train"]["beam"])
        j = self.prep.journeys
        e_rows = np.nonzero((j.ttype == E) & (j.request >= 0))[0]
        self.pos_of = np.full(int(j.request.max()) + 1, -1, dtype=np.int64)
        self.pos_of[j.request[e_rows]] = e_rows
        self._trie_col: np.ndarray | None = None

    def _columns(self, batch: RequestBatch) -> np.ndarray:
        """For each trie item, its column in the replay's eligibility mask (ad index)."""
        if self._trie_col is None:
            self._trie_col = batch.ads.index_of(self.prep.trie.items.numpy())
        return self._trie_col

    @torch.no_grad()
    def rank(self, batch: RequestBatch) -> Ranked:
        prep, max_len = self.prep, self.model.cfg.max_len
        pos = self.pos_of[batch.request_ids]
        b = prep.at_requests(pos, max_len, getattr(self.model.cfg, "thought_tokens", 0))
        cols = self._columns(batch)
        elig = np.where(cols[None, :] >= 0, batch.eligible[:, np.maximum(cols, 0)], False)
        items, scores = self.model.generate(b, prep.trie, self.beam, torch.from_numpy(elig))
        if self.rank_by == "value":
            items, scores = self._by_value(b, items, batch)
        else:
            if self.hte_weight:
                value = self._hte_value(b, items, batch)
                items, scores = bid_tilted(items, scores, value, self.hte_weight)
            if self.bid_weight:
                bid = ad_bids(items, batch.ads)
                items, scores = bid_tilted(items, scores, bid, self.bid_weight)
        m = min(batch.m, items.shape[1])
        ads = items[:, :m].numpy()
        values = np.where(ads >= 0, scores[:, :m].numpy(), np.nan)
        return Ranked(ads, values)

    def _hte_value(self, b: Batch, items: torch.Tensor, batch: RequestBatch) -> torch.Tensor:
        """bid x HTE pCTR x HTE pCVR (expected revenue) of each candidate, 0 for -1."""
        assert isinstance(self.model, GPRModel)
        codes = torch.from_numpy(self.prep.sids.codes[items.clamp(min=0).numpy()])
        side = None
        if self.model.cfg.hte_side:
            side = hte_side_features(b, items, batch.ads, batch.days)
        ctr, cvr = self.model.hte_probs(b, codes, side)
        return torch.where(items >= 0, ad_bids(items, batch.ads) * ctr * cvr, 0.0)

    def _by_value(
        self, b: Batch, items: torch.Tensor, batch: RequestBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-rank the candidates by bid x HTE pCTR x HTE pCVR (expected revenue)."""
        value = self._hte_value(b, items, batch)
        value = torch.where(items >= 0, value, -torch.inf)
        order = value.argsort(dim=1, descending=True)
        return items.gather(1, order), value.gather(1, order)

"""A trained generative run (GPR, HSTU, TIGER, SASRec) as a policy of the true-world replay.

For each request the model reads the journey up to (and including) the request's E token, then
decodes inside the trie of the ads eligible for that request; every generated ad exists and may be
shown. The union of the MTP heads' beams is ranked by the run's `serve.rank_by`: `logprob` (the
path log-probability, plus `serve.bid_weight` x log bid and `serve.hte_weight` x log HTE value)
or `value` (bid x HTE pCTR x HTE pCVR alone, the model's own auction: spec §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gpr.config import serve_config
from gpr.errors import GprInputError
from gpr.eval.eligibility import LOG_BID_CENTRE, LOG_PRICE_CENTRE, Ads
from gpr.eval.policy import Ranked, RequestBatch
from gpr.eval.simulate import NEW_AD_DAYS
from gpr.model.gpr import GPRModel
from gpr.model.hte import SESSION_FEATURES, SIDE_FEATURES
from gpr.model.journey import Batch, E, I, O
from gpr.train.cascade.features import current_session
from gpr.train.mtp import load_run

SESSION_GAP_SECONDS = 300  # a longer pause ends a session (the cascade's default rule)


@dataclass(frozen=True)
class ItemTopics:
    """Subtopic and category of every item id, organic and ad (-1: unknown id)."""

    subtopic: np.ndarray
    category: np.ndarray

    @classmethod
    def from_items(cls, items: pa.Table, file: str | Path = "items") -> ItemTopics:
        missing = [c for c in ("item_id", "subtopic", "category") if c not in items.column_names]
        if missing:
            raise GprInputError("missing column (model.hte_session)", file=file, field=missing[0])
        ids = items.column("item_id").to_numpy().astype(np.int64)
        out = {}
        for k in ("subtopic", "category"):
            a = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
            a[ids] = items.column(k).to_numpy().astype(np.int64)
            out[k] = a
        return cls(**out)

    @classmethod
    def load(cls, data_dir: str | Path) -> ItemTopics:
        path = Path(data_dir) / "items.parquet"
        if not path.exists():
            raise GprInputError("file not found", file=path)
        cols = ["item_id", "subtopic", "category"]
        names = pq.read_schema(path).names
        return cls.from_items(pq.read_table(path, columns=[c for c in cols if c in names]), path)

    def of(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(item_ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < len(self.subtopic))
        i = np.where(ok, ids, 0)
        return np.where(ok, self.subtopic[i], -1), np.where(ok, self.category[i], -1)


def session_side_features(b: Batch, items: torch.Tensor, topics: ItemTopics) -> torch.Tensor:
    """(P, N, len(SESSION_FEATURES)) for candidate ad ids `items` (P, N) at the predictions of
    `b`: which share of the organic views in the current session (after the last pause longer
    than SESSION_GAP_SECONDS before the request) and in the whole window share the ad's subtopic
    or category. Rows of -1 items are 0."""
    ids, tt = b.item[b.pred_b].numpy(), b.ttype[b.pred_b].numpy()
    ts, t = b.ts[b.pred_b].numpy(), b.pred_t.numpy()
    p, width = ids.shape
    view = (tt == O) & (ids >= 0) & (np.arange(width)[None, :] <= t[:, None])
    now = ts[np.arange(p), t]
    order = np.argsort(view, axis=1, kind="stable")  # the views last, oldest first
    flat = order + width * np.arange(p)[:, None]
    idx = np.where(np.take_along_axis(view, order, 1), flat, -1)
    sess = np.zeros_like(view)
    np.put_along_axis(
        sess, order, current_session(ts.reshape(-1), idx, now, SESSION_GAP_SECONDS), 1
    )
    v_sub, v_cat = topics.of(ids)
    a_sub, a_cat = topics.of(items.numpy())
    n_sess, n_view = sess.sum(1), view.sum(1)

    def share(v: np.ndarray, a: np.ndarray, mask: np.ndarray, n: np.ndarray) -> np.ndarray:
        hit = (v[:, None, :] == a[:, :, None]) & mask[:, None, :]
        return hit.sum(-1) / np.maximum(n, 1)[:, None]

    cols = {
        "session_sub_share": share(v_sub, a_sub, sess, n_sess),
        "session_cat_share": share(v_cat, a_cat, sess, n_sess),
        "session_log_views": np.broadcast_to(np.log1p(n_sess)[:, None], a_sub.shape),
        "window_sub_share": share(v_sub, a_sub, view, n_view),
    }
    ok = items.numpy() >= 0
    x = np.stack([np.where(ok, cols[k], 0.0) for k in SESSION_FEATURES], -1)
    return torch.from_numpy(x).float()


def ad_bids(items: torch.Tensor, ads: Ads) -> torch.Tensor:
    """Bid of each ad item id (0 for -1 and unknown ids)."""
    a = ads.index_of(items.numpy())
    return torch.from_numpy(np.where(a >= 0, ads.bid[np.maximum(a, 0)], 0.0)).float()


def hte_side_features(
    b: Batch,
    items: torch.Tensor,
    ads: Ads,
    days: np.ndarray,
    topics: ItemTopics | None = None,
) -> torch.Tensor:
    """(P, N, len(SIDE_FEATURES)) side features of candidate ad ids `items` (P, N) for the
    predictions of `b` on `days` (P,); rows of -1 / unknown items are 0. With `topics`
    (`model.hte_session`) the SESSION_FEATURES follow."""
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
    x = torch.from_numpy(np.stack([np.where(ok, cols[k], 0.0) for k in SIDE_FEATURES], -1))
    if topics is not None:
        return torch.cat([x.float(), session_side_features(b, items, topics)], -1)
    return x.float()


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
        self.topics = (
            ItemTopics.load(data_dir) if getattr(self.model.cfg, "hte_session", 0) else None
        )

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
            side = hte_side_features(b, items, batch.ads, batch.days, self.topics)
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

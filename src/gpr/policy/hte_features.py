"""HTE's side inputs for candidate ads: price, bid and age features, and the current session's
organic views in the ad's subtopic / category (`model.hte_features`: side, session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gpr.core.errors import GprInputError
from gpr.market.ads import LOG_BID_CENTRE, LOG_PRICE_CENTRE, NEW_AD_DAYS, Ads
from gpr.market.sessions import in_current_session
from gpr.model.hte import SESSION_FEATURES, SIDE_FEATURES
from gpr.model.journey import Batch, I, O


@dataclass(frozen=True)
class ItemTopics:
    """Subtopic and category of every item id, organic and ad (-1: unknown id)."""

    subtopic: np.ndarray
    category: np.ndarray

    @classmethod
    def from_items(cls, items: pa.Table, file: str | Path = "items") -> ItemTopics:
        missing = [c for c in ("item_id", "subtopic", "category") if c not in items.column_names]
        if missing:
            raise GprInputError(
                "missing column (model.hte_features: session)", file=file, field=missing[0]
            )
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
    np.put_along_axis(sess, order, in_current_session(ts.reshape(-1), idx, now), 1)
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
    (`model.hte_features` session) the SESSION_FEATURES follow."""
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

"""Cascade features: what the retrieval and ranking models see for a request and an ad.

- User history (from the journey index, strictly before the request): the last `n_hist_organic`
  organic items and the last `n_hist_ads` shown ads with their action, each with a log2 bucket of
  its age in seconds (so a model can tell the current session from older ones); the organic items
  of the current session are those less than ~30 minutes old. A longer profile: the subtopics of
  the last `n_long` organic items and the mean of their content embeddings.
- User: demographics (age band, gender, region, activity tier).
- Environment: scene, slot, device, hour.
- Ad: an ad-id embedding (dropped out in training so that content carries new ads), the item's
  content `embedding` (a frozen table from items.parquet) through a learned linear projection,
  subtopic and category embeddings, log bid, log price and an age bucket (days since creation).
  Organic items share the content projection and the topic embeddings: one semantic space.
- Explicit user x ad match features (`match_features`, parameter-free, the "wide" input of the
  ranker): content dot products of the ad with the session mean, the long profile and the clicked
  ads; the share of session / long-profile views in the ad's subtopic and category; log price,
  log bid; history lengths; the mean log price of the ads the user was shown and its product with
  the ad's (a proxy of the user's price sensitivity); the dot product with the mean of the ads
  the user was shown (the logging cascade's view of the user); logged ad statistics of the days
  before the request (impressions per active day, smoothed CTR and CVR: proxies of ad quality).
  They carry the signal with few parameters where clicks are scarce.

Ids are shifted by one so that 0 is padding everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from gpr.cascade.topics import SESSION_BUCKET, SessionTopics, topic_features
from gpr.core.config import CascadeConfig
from gpr.market.ads import LOG_BID_CENTRE, LOG_PRICE_CENTRE, Ads, Users
from gpr.market.journeys import TYPE_CODE, Journeys, LogData
from gpr.market.sessions import in_current_session

N_GAP = 24  # gap buckets 1..N_GAP: 1 + floor(log2(1 + seconds)); 0 = padding
DEMO_SIZES = (8, 4, 8, 5)  # age band, gender, region, tier (+1, 0 unknown; larger values clip)
ENV_SIZES = (5, 8, 5, 26)  # scene, slot, device, hour
N_AGE = 8  # ad age buckets: 0,1,2,3 days, 4-7, 8-15, 16-31, 32+


N_AD_STATS = 4


def ad_stats(
    jour: Journeys, ads: Ads, prior_imps: float = 50.0, prior_clicks: float = 10.0
) -> np.ndarray:
    """(D+1, A, 4) per ad from the logged impressions of the days strictly before d: log
    impressions per active day, the smoothed CTR and CVR logits relative to the global rates, and
    log(1 + active days) (so that "new, no data yet" differs from "old and never shown"). The
    logging cascade showed an ad more when its (hidden) quality was high, so these reveal it."""
    rows = np.nonzero(jour.ttype == TYPE_CODE["I"])[0]
    a = ads.index_of(jour.item[rows])
    rows, a = rows[a >= 0], a[a >= 0]
    n_days = int(jour.day.max()) + 1
    day = jour.day[rows]
    act = jour.action[rows]
    cnt = np.zeros((3, n_days + 1, ads.n))
    for k, w in enumerate((np.ones(len(a)), act >= 1, act == 2)):
        np.add.at(cnt[k], (day + 1, a), w.astype(np.float64))
    imps, clicks, convs = np.cumsum(cnt, axis=1)  # [d] = days < d
    d = np.arange(n_days + 1)[:, None]
    active = np.clip(np.minimum(d, ads.end_day) - np.maximum(ads.created_day, 0), 0, None)
    p_ctr = max(clicks[-1].sum() / max(imps[-1].sum(), 1), 1e-4)
    p_cvr = max(convs[-1].sum() / max(clicks[-1].sum(), 1), 1e-4)

    def logit(p: np.ndarray) -> np.ndarray:
        return np.log(p / (1 - p))

    ctr = (clicks + prior_imps * p_ctr) / (imps + prior_imps)
    cvr = (convs + prior_clicks * p_cvr) / (clicks + prior_clicks)
    out = np.stack(
        [
            np.log1p(imps / np.maximum(active, 1)),
            logit(ctr) - logit(np.asarray(p_ctr)),
            logit(cvr) - logit(np.asarray(p_cvr)),
            np.log1p(np.broadcast_to(active, imps.shape)),
        ],
        -1,
    )
    return out.astype(np.float32)


@dataclass
class Catalog:
    """Static observable item features, rows indexed by item id + 1 (row 0 = padding)."""

    content: np.ndarray  # (N+1, E) float32
    subtopic: np.ndarray  # (N+1,) topic id + 1
    category: np.ndarray
    ad_slot: np.ndarray  # (N+1,) ad index + 1, 0 for organic / padding
    ad_row: np.ndarray  # (A,) item row (item id + 1) of each ad
    log_bid: np.ndarray  # (A,)
    log_price: np.ndarray
    created_day: np.ndarray
    sub_cat: np.ndarray  # (S+1,) category + 1 of each subtopic + 1 (0 pad)
    ad_stats: np.ndarray  # (D+1, A, N_AD_STATS) logged ad statistics of the days before day d
    topics: SessionTopics | None = None  # session-topic model (topics.py), when switched on
    session_gap: int = 0  # seconds; 0: the legacy current session (views younger than WINDOW)

    @classmethod
    def from_logs(cls, logs: LogData, cfg: CascadeConfig | None = None) -> Catalog:
        """The catalogue with the logged ad statistics, and the session-topic model when `cfg`
        switches it on."""
        cat = cls.from_items(logs.items, logs.ads, ad_stats(logs.journeys, logs.ads))
        cat.session_gap = cfg.session_gap_seconds if cfg is not None else 0
        if cfg is not None and cfg.session_topics:
            kind = logs.items.column("kind").to_numpy(zero_copy_only=False)
            ids = logs.items.column("item_id").to_numpy().astype(np.int64)
            cat.topics = SessionTopics.fit(
                logs.journeys,
                cat.subtopic,
                cat.content,
                ids[kind != "ad"] + 1,
                prior_strength=cfg.topic_prior_strength,
                half_life_days=cfg.topic_half_life_days,
                session_gap=cat.session_gap,
            )
        return cat

    @classmethod
    def from_items(cls, items: pa.Table, ads: Ads, stats: np.ndarray | None = None) -> Catalog:
        ids = items.column("item_id").to_numpy().astype(np.int64)
        n = int(ids.max()) + 2
        if "embedding" in items.column_names:
            emb = np.stack(items.column("embedding").to_numpy(zero_copy_only=False)).astype(
                np.float32
            )
        else:
            emb = np.zeros((len(ids), 1), np.float32)
        content = np.zeros((n, emb.shape[1]), np.float32)
        content[ids + 1] = emb
        sub = np.zeros(n, np.int64)
        cat = np.zeros(n, np.int64)
        sub[ids + 1] = items.column("subtopic").to_numpy().astype(np.int64) + 1
        cat[ids + 1] = items.column("category").to_numpy().astype(np.int64) + 1
        sub_cat = np.zeros(int(sub.max()) + 1, np.int64)
        sub_cat[sub] = cat
        sub_cat[0] = 0
        ad_slot = np.zeros(n, np.int64)
        ad_slot[ads.item_id + 1] = np.arange(ads.n) + 1
        return cls(
            content=content,
            subtopic=np.maximum(sub, 0),
            category=np.maximum(cat, 0),
            ad_slot=ad_slot,
            ad_row=ads.item_id + 1,
            log_bid=np.log(np.maximum(ads.bid, 1e-6)).astype(np.float32),
            log_price=np.log(np.maximum(ads.price, 1e-6)).astype(np.float32),
            created_day=ads.created_day,
            sub_cat=sub_cat,
            ad_stats=stats if stats is not None else np.zeros((1, ads.n, N_AD_STATS), np.float32),
        )

    @property
    def n_ads(self) -> int:
        return len(self.ad_row)


@dataclass
class RequestFeatures:
    """Features of B requests (numpy; `tensors` converts a slice)."""

    user: np.ndarray  # (B,) user id + 1
    demo: np.ndarray  # (B, 4) age+1, gender+1, region+1, tier+1
    env: np.ndarray  # (B, 4) scene+1, slot (clipped to 0..7), device+1, hour+1
    day: np.ndarray  # (B,)
    o_item: np.ndarray  # (B, Lo) item row (id + 1), 0 pad
    o_gap: np.ndarray  # (B, Lo)
    o_sess: np.ndarray  # (B, Lo) bool: the view belongs to the request's current session
    i_item: np.ndarray  # (B, Li)
    i_action: np.ndarray  # (B, Li) action + 1, 0 pad
    i_gap: np.ndarray  # (B, Li)
    l_sub: np.ndarray  # (B, Ll) subtopic + 1 of the last n_long organic items, 0 pad
    l_mean: np.ndarray  # (B, E) mean content embedding of those items (zeros when none)
    t_prior: np.ndarray  # (B, S) session-topic prior (topics.py); (B, 0) when off

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx: np.ndarray) -> RequestFeatures:
        return RequestFeatures(**{k: v[idx] for k, v in self.__dict__.items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.__dict__.items()}


def _gap_bucket(seconds: np.ndarray) -> np.ndarray:
    g = 1 + np.floor(np.log2(1.0 + np.maximum(seconds, 0))).astype(np.int64)
    return np.minimum(g, N_GAP)


def current_session(row_ts: np.ndarray, idx: np.ndarray, now: np.ndarray, gap: int) -> np.ndarray:
    """(B, L) mask of the history rows `idx` in the current session at times `now`: with gap > 0,
    market.sessions' rule; with gap = 0, the legacy rule, views younger than the WINDOW of
    topics.py (a pause inside it did not split)."""
    if gap > 0:
        return in_current_session(row_ts, idx, now, gap)
    ok = idx >= 0
    t = np.where(ok, row_ts[np.maximum(idx, 0)], 0).astype(np.int64)
    return ok & (_gap_bucket(now[:, None] - t) <= SESSION_BUCKET)


def request_features(
    jour: Journeys,
    users: Users,
    cat: Catalog,
    pos: np.ndarray,
    n_organic: int,
    n_ads: int,
    n_long: int,
    chunk: int = 4096,
) -> RequestFeatures:
    """Features of the requests whose E rows are at `pos` (history strictly before them)."""
    pos = np.asarray(pos, dtype=np.int64)
    if len(pos) > chunk:
        parts = [
            request_features(jour, users, cat, pos[i : i + chunk], n_organic, n_ads, n_long)
            for i in range(0, len(pos), chunk)
        ]
        return RequestFeatures(
            **{k: np.concatenate([getattr(p, k) for p in parts]) for k in parts[0].__dict__}
        )
    uid = jour.user[pos]
    ts = jour.ts[pos]

    def hist(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = idx >= 0
        j = np.maximum(idx, 0)
        item = np.where(ok, jour.item[j] + 1, 0)
        gap = np.where(ok, _gap_bucket(ts[:, None] - jour.ts[j]), 0)
        return item.astype(np.int32), gap.astype(np.int8)

    o_idx = jour.last(pos, n_organic, ("O",))
    i_idx = jour.last(pos, n_ads, ("I",))
    o_item, o_gap = hist(o_idx)
    o_sess = current_session(jour.ts, o_idx, ts, cat.session_gap)
    i_item, i_gap = hist(i_idx)
    i_action = np.where(i_idx >= 0, jour.action[np.maximum(i_idx, 0)] + 1, 0).astype(np.int8)
    l_idx = jour.last(pos, n_long, ("O",))
    l_row = np.where(l_idx >= 0, jour.item[np.maximum(l_idx, 0)] + 1, 0)
    l_ok = l_row > 0
    l_mean = (cat.content[l_row] * l_ok[..., None]).sum(1) / np.maximum(l_ok.sum(1), 1)[:, None]
    demo = np.stack(
        [users.age_band[uid], users.gender[uid], users.region[uid], users.activity_tier[uid]], 1
    )
    env = np.stack(
        [
            jour.scene[pos] + 1,
            np.clip(jour.slot[pos], 0, 7),
            jour.device[pos] + 1,
            jour.hour[pos] + 1,
        ],
        1,
    )
    return RequestFeatures(
        user=(uid + 1).astype(np.int64),
        demo=np.clip(demo + 1, 0, np.asarray(DEMO_SIZES) - 1).astype(np.int64),
        env=np.clip(env, 0, np.asarray(ENV_SIZES) - 1).astype(np.int64),
        day=jour.day[pos].astype(np.int64),
        o_item=o_item,
        o_gap=o_gap,
        o_sess=o_sess,
        i_item=i_item,
        i_action=i_action,
        i_gap=i_gap,
        l_sub=cat.subtopic[l_row].astype(np.int16),
        l_mean=l_mean.astype(np.float32),
        t_prior=(
            cat.topics.prior(jour, cat.subtopic, pos)
            if cat.topics is not None
            else np.zeros((len(pos), 0), np.float32)
        ),
    )


def age_bucket(days_old: torch.Tensor) -> torch.Tensor:
    d = days_old.clamp(min=0)
    big = 4 + torch.floor(torch.log2(d.clamp(min=4).float() / 4)).long()
    return torch.where(d < 4, d, big).clamp(max=N_AGE - 1)


class FeatureEmbedder(nn.Module):
    """Embedding tables shared by a model's request side and ad side."""

    content: torch.Tensor  # frozen buffers (not saved: rebuilt from items.parquet)
    subtopic: torch.Tensor
    category: torch.Tensor
    ad_slot: torch.Tensor
    ad_row: torch.Tensor
    log_bid: torch.Tensor
    log_price: torch.Tensor
    created_day: torch.Tensor
    sub_cat: torch.Tensor
    ad_stats: torch.Tensor
    topic_log_t: torch.Tensor  # (S, S), (0, 0) when the session-topic model is off
    topic_affinity: torch.Tensor
    topic_centroid: torch.Tensor

    def __init__(self, cat: Catalog, dim: int, id_dropout: float) -> None:
        super().__init__()
        self.register_buffer("content", torch.from_numpy(cat.content), persistent=False)
        self.register_buffer("subtopic", torch.from_numpy(cat.subtopic), persistent=False)
        self.register_buffer("category", torch.from_numpy(cat.category), persistent=False)
        self.register_buffer("ad_slot", torch.from_numpy(cat.ad_slot), persistent=False)
        self.register_buffer("ad_row", torch.from_numpy(cat.ad_row), persistent=False)
        self.register_buffer("log_bid", torch.from_numpy(cat.log_bid), persistent=False)
        self.register_buffer("log_price", torch.from_numpy(cat.log_price), persistent=False)
        self.register_buffer(
            "created_day", torch.from_numpy(cat.created_day.astype(np.int64)), persistent=False
        )
        self.register_buffer("sub_cat", torch.from_numpy(cat.sub_cat), persistent=False)
        self.register_buffer("ad_stats", torch.from_numpy(cat.ad_stats), persistent=False)
        t = cat.topics
        for name in ("log_t", "affinity", "centroid"):
            value = getattr(t, name) if t is not None else np.zeros((0, 0), np.float32)
            self.register_buffer(f"topic_{name}", torch.from_numpy(value), persistent=False)
        self.id_dropout = id_dropout
        self.proj = nn.Linear(cat.content.shape[1], dim, bias=False)
        self.sub = nn.Embedding(int(cat.subtopic.max()) + 1, dim, padding_idx=0)
        self.cat = nn.Embedding(int(cat.category.max()) + 1, dim, padding_idx=0)
        self.ad_id = nn.Embedding(cat.n_ads + 1, dim, padding_idx=0)
        self.gap = nn.Embedding(N_GAP + 1, dim, padding_idx=0)
        self.action = nn.Embedding(4, dim, padding_idx=0)
        self.demo = nn.ModuleList(nn.Embedding(n, dim) for n in DEMO_SIZES)
        self.env = nn.ModuleList(nn.Embedding(n, dim) for n in ENV_SIZES)
        self.age = nn.Embedding(N_AGE, dim)
        nn.init.normal_(self.ad_id.weight, std=0.01)
        with torch.no_grad():
            self.ad_id.weight[0].zero_()

    def _drop(self, ids: torch.Tensor) -> torch.Tensor:
        if self.training and self.id_dropout > 0:
            keep = torch.rand(ids.shape) >= self.id_dropout
            return ids * keep
        return ids

    def item(self, rows: torch.Tensor) -> torch.Tensor:
        """Items by row (item id + 1): content projection + topics (+ ad id for ads)."""
        rows = rows.long()
        e = (
            self.proj(self.content[rows])
            + self.sub(self.subtopic[rows])
            + self.cat(self.category[rows])
        )
        return e + self.ad_id(self._drop(self.ad_slot[rows]))

    def ad(self, a: torch.Tensor) -> torch.Tensor:
        """Ads by ad index (0..A-1)."""
        return self.item(self.ad_row[a])

    def organic_history(self, r: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.item(r["o_item"]) + self.gap(r["o_gap"].long())

    def ad_history(self, r: dict[str, torch.Tensor]) -> torch.Tensor:
        return (
            self.item(r["i_item"]) + self.action(r["i_action"].long()) + self.gap(r["i_gap"].long())
        )

    def session(self, r: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the current session's organic items (B, D); zeros when none."""
        recent = session_views(r)
        e = self.item(r["o_item"]) * recent[..., None]
        return e.sum(1) / recent.sum(1, keepdim=True).clamp(min=1)

    def user(self, r: dict[str, torch.Tensor]) -> torch.Tensor:
        d = r["demo"]
        u = sum(emb(d[:, i]) for i, emb in enumerate(self.demo))
        return u

    def environment(self, r: dict[str, torch.Tensor]) -> torch.Tensor:
        e = r["env"]
        return sum(emb(e[:, i]) for i, emb in enumerate(self.env))

    def ad_numeric(self, a: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
        """(.., 2) log bid and log price, centred; a (B, K), day (B,)."""
        return torch.stack(
            [self.log_bid[a] - LOG_BID_CENTRE, self.log_price[a] - LOG_PRICE_CENTRE], -1
        )

    def ad_age(self, a: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
        return self.age(age_bucket(day[:, None] - self.created_day[a]))


N_MATCH = 20  # width of match_features (+ N_TOPIC with the session-topic model)


def _share(hist: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of the masked history entries (B, L) equal to each target (B, K) -> (B, K)."""
    same = (hist[:, None, :] == target[..., None]) & mask[:, None, :]
    return same.float().sum(-1) / mask.float().sum(-1, keepdim=True).clamp(min=1)


def session_views(r: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, Lo) mask of the organic history that belongs to the current session."""
    return (r["o_item"] > 0) & r["o_sess"]


def session_mean(
    content: torch.Tensor, r: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean content (B, E) of the current session's organic views (zeros when none), and their
    count (B, 1)."""
    sess = session_views(r)
    n = sess.sum(1, keepdim=True)
    x = (content[r["o_item"].long()] * sess[..., None]).sum(1) / n.clamp(min=1)
    return x, n


def match_features(e: FeatureEmbedder, r: dict[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    """(B, K, N_MATCH) parameter-free user x ad features for candidates a (B, K) ad indices."""
    rows = e.ad_row[a]
    xa = e.content[rows]  # (B, K, E)
    a_sub, a_cat = e.subtopic[rows], e.category[rows]
    o = r["o_item"].long()
    sess = session_views(r)
    sess_x, _ = session_mean(e.content, r)
    i = r["i_item"].long()
    clicked = (i > 0) & (r["i_action"].long() >= 2)
    click_x = (e.content[i] * clicked[..., None]).sum(1) / clicked.sum(1, keepdim=True).clamp(min=1)
    l_sub = r["l_sub"].long()
    l_ok = l_sub > 0
    o_sub = e.subtopic[o]
    shown_i = i > 0
    shown_x = (e.content[i] * shown_i[..., None]).sum(1) / shown_i.sum(1, keepdim=True).clamp(min=1)
    dots = torch.einsum("bke,bfe->bkf", xa, torch.stack([sess_x, r["l_mean"], click_x, shown_x], 1))
    shares = torch.stack(
        [
            _share(o_sub, sess, a_sub),
            _share(e.sub_cat[o_sub], sess, a_cat),
            _share(l_sub, l_ok, a_sub),
            _share(e.sub_cat[l_sub], l_ok, a_cat),
        ],
        -1,
    )
    counts = torch.stack(
        [
            torch.log1p(sess.sum(1).float()),
            torch.log1p(l_ok.sum(1).float()),
            torch.log1p(clicked.sum(1).float()),
        ],
        -1,
    )[:, None, :].expand(*a.shape, 3)
    lp = e.log_price[a] - LOG_PRICE_CENTRE
    numeric = torch.stack([lp, e.log_bid[a] - LOG_BID_CENTRE], -1)
    # the price level of the ads the user was shown: the logging cascade showed cheaper ads to
    # price-sensitive users, so it proxies price sensitivity (pCVR's price slope); 0 when none
    slot = e.ad_slot[i]
    shown = slot > 0
    hist_lp = (e.log_price[(slot - 1).clamp(min=0)] - LOG_PRICE_CENTRE) * shown
    hist_lp = hist_lp.sum(1) / shown.sum(1).clamp(min=1)  # (B,)
    price = torch.stack(
        [
            hist_lp[:, None].expand_as(lp),
            lp * hist_lp[:, None],
            torch.log1p(shown.sum(1).float())[:, None].expand_as(lp),
        ],
        -1,
    )
    day = r["day"].clamp(0, e.ad_stats.shape[0] - 1)
    stats = e.ad_stats[day[:, None], a]  # (B, K, N_AD_STATS)
    parts = [dots, shares, numeric, counts, price, stats]
    if e.topic_log_t.numel():
        if r["t_prior"].shape[1] != e.topic_log_t.shape[0]:
            raise ValueError(
                "request features were built without this model's session-topic model: "
                "build them with the model's own Catalog (request_features(..., cat, ...))"
            )
        log_prior = torch.log(r["t_prior"].clamp(min=1e-12))
        parts.append(
            topic_features(
                log_prior,
                o_sub - 1,
                sess,
                a_sub - 1,
                xa,
                e.topic_log_t,
                e.topic_affinity,
                e.topic_centroid,
            )
        )
    return torch.cat(parts, -1)

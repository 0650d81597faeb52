"""One day of user journeys: sessions, organic views and the ad requests interleaved with them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpr.core.config import WorldConfig
from gpr.world.entities import N_DEVICES, Catalog, Population
from gpr.world.response import session_latent, view_subtopic_logits

DAY = 86400


@dataclass
class DayJourneys:
    """Rows of one day, in journey order (user, then time). Requests are a subset of rows."""

    user: np.ndarray  # (R,) every O/E row
    ts: np.ndarray
    item: np.ndarray  # organic item id, -1 for E rows
    is_request: np.ndarray  # E rows (each followed by its I row once the cascade has chosen)
    # request fields, aligned with np.nonzero(is_request)
    req_user: np.ndarray
    req_ts: np.ndarray
    req_slot: np.ndarray
    req_scene: np.ndarray
    req_device: np.ndarray
    req_hour: np.ndarray
    req_topic: np.ndarray  # hidden session intent subtopic
    req_z: np.ndarray  # (Q, d) hidden session latent


def _group_items(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """Organic item ids sorted by subtopic, and each subtopic's start offset."""
    sub = catalog.subtopic[: catalog.n_organic]
    order = np.argsort(sub, kind="stable")
    starts = np.searchsorted(sub[order], np.arange(len(catalog.sub_centroid) + 1))
    return order, starts


def simulate_day(
    cfg: WorldConfig, day: int, cat: Catalog, pop: Population, rng: np.random.Generator
) -> DayJourneys:
    # sessions
    rate = np.asarray(cfg.sessions_per_day)[pop.tier]
    n_sess = rng.poisson(rate)
    s_user = np.repeat(np.arange(pop.n_users), n_sess)
    ns = len(s_user)
    interests = pop.interests[day][s_user]
    w = pop.weights[s_user] * (interests >= 0)
    cum = np.cumsum(w, axis=1)
    pick = (rng.random(ns)[:, None] * cum[:, -1:] > cum).sum(axis=1)
    topic = interests[np.arange(ns), np.minimum(pick, 3)].astype(np.int64)
    z = session_latent(cat.sub_centroid, topic, pop.offset[s_user])
    scene = (rng.random(ns)[:, None] > np.cumsum(pop.scene_probs[s_user], axis=1)).sum(axis=1)
    scene = np.minimum(scene, 2)
    device = np.where(rng.random(ns) < 0.9, pop.device[s_user], rng.integers(0, N_DEVICES, ns))
    hour = np.clip(np.round(pop.peak_hour[s_user] + rng.normal(0, 3, ns)), 0, 22).astype(np.int64)
    start = day * DAY + hour * 3600 + rng.integers(0, 3600, ns)
    n_views = np.minimum(rng.geometric(1.0 / cfg.views_per_session, ns), cfg.max_views_per_session)

    # organic views: subtopic by centroid affinity and popularity mass, then item inside it
    v_sess = np.repeat(np.arange(ns), n_views)
    nv = len(v_sess)
    order, starts = _group_items(cat)
    sizes = np.diff(starts)
    sub_logit = view_subtopic_logits(cfg, cat.sub_centroid, cat.subtopic[: cat.n_organic], z)
    v_sub = np.argmax(sub_logit[v_sess] + rng.gumbel(size=(nv, len(sizes))), axis=1)
    v_item = np.empty(nv, dtype=np.int64)
    by_sub = np.argsort(v_sub, kind="stable")
    bounds = np.searchsorted(v_sub[by_sub], np.arange(len(sizes) + 1))
    for s in range(len(sizes)):
        rows = by_sub[bounds[s] : bounds[s + 1]]
        if len(rows) == 0:
            continue
        items = order[starts[s] : starts[s + 1]]
        logit = cfg.organic_temperature * (z[v_sess[rows]] @ cat.latent[items].T)
        logit += cat.log_pop[items][None, :]
        choice = np.argmax(logit + rng.gumbel(size=logit.shape), axis=1)
        v_item[rows] = items[choice]

    # timing inside a session, and ad requests after ~every views_per_request views
    first = np.repeat(np.cumsum(n_views) - n_views, n_views)
    v_idx = np.arange(nv) - first
    gaps = 5 + rng.exponential(25.0, nv).astype(np.int64)
    cum_gap = np.cumsum(gaps)
    sess_gap0 = np.repeat(
        cum_gap[np.cumsum(n_views) - n_views] - gaps[np.cumsum(n_views) - n_views], n_views
    )
    v_ts = start[v_sess] + (cum_gap - sess_gap0)
    req_flag = rng.random(nv) < 1.0 / cfg.views_per_request
    cum_req = np.cumsum(req_flag)
    base = np.repeat(
        cum_req[np.cumsum(n_views) - n_views] - req_flag[np.cumsum(n_views) - n_views], n_views
    )
    slot = cum_req - base
    req_flag &= slot <= cfg.max_slots

    # rows: every view, and an E row right after each view that triggered a request
    row_view = np.concatenate([np.arange(nv), np.nonzero(req_flag)[0]])
    row_is_req = np.concatenate([np.zeros(nv, bool), np.ones(int(req_flag.sum()), bool)])
    row_sess = v_sess[row_view]
    row_user = s_user[row_sess]
    row_ts = v_ts[row_view] + row_is_req
    row_seq = 2 * v_idx[row_view] + row_is_req
    ordering = np.lexsort((row_seq, row_sess, start[row_sess], row_user))
    row_user, row_ts, row_view, row_is_req, row_sess = (
        a[ordering] for a in (row_user, row_ts, row_view, row_is_req, row_sess)
    )
    # sessions of one user never overlap: make time monotone within a user, inside the day
    big = np.int64(10**8)
    row_ts = np.maximum.accumulate(row_ts + row_user * big) - row_user * big
    row_ts = np.minimum(row_ts, (day + 1) * DAY - 1)
    req_rows = np.nonzero(row_is_req)[0]
    rs = row_sess[req_rows]
    return DayJourneys(
        user=row_user,
        ts=row_ts,
        item=np.where(row_is_req, -1, v_item[row_view]),
        is_request=row_is_req,
        req_user=row_user[req_rows],
        req_ts=row_ts[req_rows],
        req_slot=slot[row_view[req_rows]],
        req_scene=scene[rs],
        req_device=device[rs],
        req_hour=hour[rs],
        req_topic=topic[rs],
        req_z=z[rs],
    )

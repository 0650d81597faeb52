"""The logging policy: a noisy retrieval -> ranking -> second-price auction cascade with budgets.

It sees a stale long-term profile (not the session), its ranker misses the session term and is
noisy, and it explores a little: imperfect the way production cascades are, so the logs support
learning a better policy. Budgets are checked before each chunk of `budget_chunk` requests (in time
order), so an ad can overspend by at most what one chunk charges it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpr.core.config import WorldConfig
from gpr.market.ads import Ads, Users, eligible_mask
from gpr.world.entities import Catalog, Population
from gpr.world.journeys import DayJourneys
from gpr.world.response import ctr_logit, ctr_logit_static, cvr_logit, normalize, sigmoid

NO_AD = -1


@dataclass
class Served:
    ad: np.ndarray  # ad index per request, NO_AD when nothing was eligible
    price: np.ndarray  # oCPA price per conversion set by the auction
    action: np.ndarray  # 0 impression, 1 click, 2 conversion (-1 when no ad)
    pctr: np.ndarray  # true pCTR of the shown ad
    pcvr: np.ndarray
    exhausted: int  # ads whose budget ran out this day


def run_logging_policy(
    cfg: WorldConfig,
    day: int,
    cat: Catalog,
    pop: Population,
    jour: DayJourneys,
    rng: np.random.Generator,
    ad_attrs: Ads,
    user_attrs: Users,
) -> Served:
    """Serve one day's requests in time order; eligibility reads the public ad / user attributes
    through the same function the evaluator uses."""
    q = len(jour.req_user)
    u_now = pop.long_term(cat.sub_centroid, day)
    u_old = pop.long_term(cat.sub_centroid, day - cfg.profile_lag_days)
    ad_lat = cat.latent[cat.n_organic :]
    log_price = np.log(cat.price)
    spend = np.zeros(cat.n_ads)
    out_ad = np.full(q, NO_AD, dtype=np.int64)
    out_price = np.zeros(q)
    out_pctr = np.zeros(q)
    out_pcvr = np.zeros(q)
    out_action = np.full(q, -1, dtype=np.int64)
    order = np.argsort(jour.req_ts, kind="stable")
    for lo in range(0, q, cfg.budget_chunk):
        idx = order[lo : lo + cfg.budget_chunk]
        users = jour.req_user[idx]
        elig = eligible_mask(ad_attrs, user_attrs, users, np.full(len(idx), day), spend)
        has_any = elig.any(axis=1)
        # retrieval on a stale, noisy profile
        prof = normalize(
            u_old[users]
            + rng.standard_normal(u_old[users].shape) * cfg.profile_noise / np.sqrt(ad_lat.shape[1])
        )
        score = np.where(elig, prof @ ad_lat.T, -np.inf)
        k = min(cfg.retrieval_k, cat.n_ads)
        cand = np.argpartition(-score, k - 1, axis=1)[:, :k]
        cand_ok = np.isfinite(np.take_along_axis(score, cand, axis=1))
        # ranking: the truth without the session term, with multiplicative noise
        aff_long = np.einsum("bd,bkd->bk", u_now[users], ad_lat[cand])
        slot, scene, device = (
            a[idx][:, None] for a in (jour.req_slot, jour.req_scene, jour.req_device)
        )
        static = ctr_logit_static(cfg, aff_long, cat.quality[cand], slot, scene, device)
        cvr_l = cvr_logit(
            cfg, aff_long, pop.sensitivity[users][:, None], log_price[cand], cat.q_conv[cand]
        )
        noise = np.exp(rng.normal(0, cfg.rank_noise, size=(2, *cand.shape)))
        pctr_hat = np.minimum(sigmoid(static) * noise[0], 1.0)
        pcvr_hat = np.minimum(sigmoid(cvr_l) * noise[1], 1.0)
        ecpm = np.where(cand_ok, cat.bid[cand] * pctr_hat * pcvr_hat * 1000, -np.inf)
        top2 = np.argsort(-ecpm, axis=1)[:, :2] if k > 1 else np.zeros((len(idx), 1), np.int64)
        rows = np.arange(len(idx))
        win = top2[:, 0]
        ad = cand[rows, win]
        w_ctr, w_cvr = pctr_hat[rows, win], pcvr_hat[rows, win]
        if k > 1:
            runner = ecpm[rows, top2[:, 1]]
            second = np.where(
                np.isfinite(runner),
                runner / (w_ctr * w_cvr * 1000),
                cfg.reserve_share * cat.bid[ad],
            )
        else:
            second = cfg.reserve_share * cat.bid[ad]
        price = np.minimum(second, cat.bid[ad])
        # exploration: a random eligible ad at the reserve price
        explore = (rng.random(len(idx)) < cfg.explore_share) & has_any
        if explore.any():
            g = np.where(elig[explore], rng.gumbel(size=(int(explore.sum()), cat.n_ads)), -np.inf)
            ad[explore] = np.argmax(g, axis=1)
            price[explore] = cfg.reserve_share * cat.bid[ad[explore]]
        ad = np.where(has_any, ad, NO_AD)
        # true response of the shown ad
        safe = np.maximum(ad, 0)
        lat = ad_lat[safe]
        a_sess = np.einsum("bd,bd->b", jour.req_z[idx], lat)
        a_long = np.einsum("bd,bd->b", u_now[users], lat)
        p_ctr = sigmoid(
            ctr_logit(cfg, a_sess, a_long, cat.quality[safe], slot[:, 0], scene[:, 0], device[:, 0])
        )
        p_cvr = sigmoid(
            cvr_logit(cfg, a_long, pop.sensitivity[users], log_price[safe], cat.q_conv[safe])
        )
        out_ad[idx] = ad
        out_price[idx] = np.where(has_any, price, 0.0)
        out_pctr[idx] = np.where(has_any, p_ctr, 0.0)
        out_pcvr[idx] = np.where(has_any, p_cvr, 0.0)
        click = rng.random(len(idx)) < out_pctr[idx]
        conv = click & (rng.random(len(idx)) < out_pcvr[idx])
        out_action[idx] = np.where(has_any, click.astype(np.int64) + conv, -1)
        np.add.at(spend, ad[conv], out_price[idx][conv])
    exhausted = int((spend >= cat.budget).sum())
    return Served(out_ad, out_price, out_action, out_pctr, out_pcvr, exhausted)

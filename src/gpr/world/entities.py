"""The static parts of the world: taxonomy, organic items, ads, users and their interest drift."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpr.core.config import WorldConfig
from gpr.world.names import ADJECTIVES, CATEGORY_NAMES, brand_name, subtopic_name
from gpr.world.response import long_term_vectors, normalize

N_AGE_BANDS = 5
N_GENDERS = 2
N_REGIONS = 6
N_SCENES = 3  # feed, moments, articles
N_DEVICES = 3  # android, ios, pc
SCENES = ("feed", "moments", "articles")
DEVICES = ("android", "ios", "pc")
ALL_AGES = (1 << N_AGE_BANDS) - 1
ALL_REGIONS = (1 << N_REGIONS) - 1


def _noise(rng: np.random.Generator, shape: tuple[int, ...], norm: float) -> np.ndarray:
    """Noise of expected norm `norm` in the last dimension: norm * N(0, I/d)."""
    return norm * rng.standard_normal(shape) / np.sqrt(shape[-1])


@dataclass
class Catalog:
    """Organic items (ids 0..n_organic-1) then ads (ids n_organic..). Arrays indexed by item id."""

    sub_centroid: np.ndarray  # (S, d), subtopic s belongs to category s // n_subtopics
    latent: np.ndarray  # (N, d) hidden
    subtopic: np.ndarray  # (N,)
    log_pop: np.ndarray  # (N,)
    embedding: np.ndarray  # (N, E) observable
    titles: list[str]
    n_organic: int
    # ads only, indexed by ad index (item id - n_organic)
    advertiser: np.ndarray
    price: np.ndarray
    bid: np.ndarray
    budget: np.ndarray
    target_ages: np.ndarray  # bitmask over age bands
    target_gender: np.ndarray  # -1 all, else 0 / 1
    target_regions: np.ndarray  # bitmask over regions
    created_day: np.ndarray
    end_day: np.ndarray  # active while created_day <= day < end_day
    quality: np.ndarray  # hidden
    q_conv: np.ndarray  # hidden

    @property
    def n_ads(self) -> int:
        return len(self.bid)

    def active(self, day: int) -> np.ndarray:
        return (self.created_day <= day) & (day < self.end_day)


@dataclass
class Population:
    age_band: np.ndarray
    gender: np.ndarray
    region: np.ndarray
    tier: np.ndarray  # 0 low, 1 mid, 2 high
    interests: np.ndarray  # (n_days, U, 4) subtopic ids, -1 padding; drift day by day
    weights: np.ndarray  # (U, 4)
    offset: np.ndarray  # (U, d) hidden
    sensitivity: np.ndarray  # (U,) hidden price sensitivity
    scene_probs: np.ndarray  # (U, 3)
    device: np.ndarray  # (U,) primary device
    peak_hour: np.ndarray  # (U,)

    @property
    def n_users(self) -> int:
        return len(self.age_band)

    def long_term(self, sub_centroid: np.ndarray, day: int) -> np.ndarray:
        day = min(max(day, 0), self.interests.shape[0] - 1)
        return long_term_vectors(sub_centroid, self.interests[day], self.weights, self.offset)


def make_taxonomy(cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    cat = normalize(rng.standard_normal((cfg.n_categories, cfg.latent_dim)))
    sub = np.repeat(cat, cfg.n_subtopics, axis=0)
    sub = normalize(sub + _noise(rng, sub.shape, cfg.subtopic_noise))
    return sub.astype(np.float32)


def make_catalog(cfg: WorldConfig, sub_centroid: np.ndarray, rng: np.random.Generator) -> Catalog:
    n_sub = len(sub_centroid)
    n_org, n_ads = cfg.n_organic, cfg.n_ads
    # advertisers concentrate on 1-2 subtopics
    adv_topics = rng.integers(0, n_sub, size=(cfg.n_advertisers, 2))
    adv_two = rng.random(cfg.n_advertisers) < 0.5
    advertiser = rng.integers(0, cfg.n_advertisers, size=n_ads)
    pick = np.where(adv_two[advertiser], rng.integers(0, 2, size=n_ads), 0)
    ad_sub = adv_topics[advertiser, pick]
    org_sub = rng.integers(0, n_sub, size=n_org)
    subtopic = np.concatenate([org_sub, ad_sub])
    n = n_org + n_ads
    latent = normalize(sub_centroid[subtopic] + _noise(rng, (n, cfg.latent_dim), cfg.item_noise))
    log_pop = rng.standard_normal(n)
    # observable content embedding: a noisy fixed projection, ads shifted by a small fixed offset
    proj = rng.standard_normal((cfg.latent_dim, cfg.embed_dim)) / np.sqrt(cfg.latent_dim)
    emb = latent @ proj + cfg.embed_noise * rng.standard_normal((n, cfg.embed_dim))
    ad_dir = normalize(rng.standard_normal(cfg.embed_dim))
    typical = float(np.median(np.linalg.norm(emb, axis=1)))
    emb[n_org:] += cfg.ad_embed_offset * typical * ad_dir
    # ads: price, bid (oCPA), budget, targeting, lifetime, quality
    price = np.exp(rng.normal(3.5, 0.8, size=n_ads))
    bid = price * rng.uniform(cfg.margin_low, cfg.margin_high, size=n_ads)
    budget = bid * cfg.budget_conversions * np.exp(rng.normal(0.0, cfg.budget_sigma, size=n_ads))
    targeted = rng.random(n_ads) < cfg.targeted_share
    ages = _random_masks(rng, n_ads, N_AGE_BANDS)
    regions = _random_masks(rng, n_ads, N_REGIONS)
    gender = np.where(rng.random(n_ads) < 1 / 3, -1, rng.integers(0, 2, size=n_ads))
    target_ages = np.where(targeted, ages, ALL_AGES)
    target_regions = np.where(targeted, regions, ALL_REGIONS)
    target_gender = np.where(targeted, gender, -1)
    # lifetimes ~ log-uniform(min, max) days, ads arriving at a steady rate. The ads alive on day 0
    # are a stationary snapshot: length-biased lifetimes (log-uniform x L = uniform) met at a
    # uniform age, so the live inventory stays roughly constant over the horizon.
    lo, hi = cfg.min_lifespan_days, cfg.max_lifespan_days
    initial = rng.random(n_ads) < cfg.ads_initial_share
    span_new = np.exp(rng.uniform(np.log(lo), np.log(hi), size=n_ads))
    span = np.ceil(np.where(initial, rng.uniform(lo, hi, size=n_ads), span_new)).astype(np.int64)
    age = np.floor(rng.random(n_ads) * span).astype(np.int64) + 1
    created = np.where(initial, 1 - age, rng.integers(1, cfg.n_days, size=n_ads))
    end = created + span
    quality = rng.normal(0.0, cfg.quality_sd, size=n_ads)
    q_conv = rng.normal(0.0, cfg.cvr_quality_sd, size=n_ads)
    titles = _titles(cfg, subtopic, advertiser, rng)
    return Catalog(
        sub_centroid=sub_centroid,
        latent=latent.astype(np.float32),
        subtopic=subtopic.astype(np.int64),
        log_pop=log_pop,
        embedding=emb.astype(np.float32),
        titles=titles,
        n_organic=n_org,
        advertiser=advertiser.astype(np.int64),
        price=price,
        bid=bid,
        budget=budget,
        target_ages=target_ages.astype(np.int64),
        target_gender=target_gender.astype(np.int64),
        target_regions=target_regions.astype(np.int64),
        created_day=created.astype(np.int64),
        end_day=end,
        quality=quality,
        q_conv=q_conv,
    )


def _random_masks(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """Random non-empty subsets as bitmasks."""
    m = (rng.random((n, bits)) < 0.5) @ (1 << np.arange(bits))
    fallback = 1 << rng.integers(0, bits, size=n)
    return np.where(m == 0, fallback, m)


def _titles(
    cfg: WorldConfig, subtopic: np.ndarray, advertiser: np.ndarray, rng: np.random.Generator
) -> list[str]:
    n_org = cfg.n_organic
    adj = rng.integers(0, len(ADJECTIVES), size=(len(subtopic), 2))
    num = rng.integers(1, 100, size=len(subtopic))
    out = []
    for i, s in enumerate(subtopic.tolist()):
        c, t = divmod(s, cfg.n_subtopics)
        words = f"{ADJECTIVES[adj[i, 0]]} {subtopic_name(c, t)} {ADJECTIVES[adj[i, 1]]} "
        words += f"{CATEGORY_NAMES[c]} #{num[i]}"
        if i >= n_org:
            words = f"{brand_name(int(advertiser[i - n_org]))} {words}"
        out.append(words)
    return out


def make_population(
    cfg: WorldConfig, sub_centroid: np.ndarray, rng: np.random.Generator
) -> Population:
    u, d = cfg.n_users, cfg.latent_dim
    age = rng.choice(N_AGE_BANDS, size=u, p=[0.15, 0.3, 0.25, 0.2, 0.1])
    gender = rng.integers(0, N_GENDERS, size=u)
    region = rng.integers(0, N_REGIONS, size=u)
    tier = rng.choice(3, size=u, p=np.asarray(cfg.tier_probs) / sum(cfg.tier_probs))
    # category prior shifted by age and gender, so U tokens carry signal
    base = rng.normal(0.0, 0.5, size=cfg.n_categories)
    age_shift = rng.normal(0.0, cfg.demographic_shift, size=(N_AGE_BANDS, cfg.n_categories))
    gender_shift = rng.normal(0.0, cfg.demographic_shift, size=(N_GENDERS, cfg.n_categories))
    cat_logits = base + age_shift[age] + gender_shift[gender]  # (U, C)
    k = np.minimum(1 + rng.poisson(cfg.extra_interests_mean, size=u), cfg.max_interests)
    slots = np.arange(4)
    interests0 = _draw_subtopics(cfg, cat_logits[:, None, :].repeat(4, 1), rng)
    interests0 = np.where(slots[None, :] < k[:, None], interests0, -1)
    weights = rng.dirichlet(np.ones(4), size=u) * (slots[None, :] < k[:, None])
    weights = weights / weights.sum(axis=1, keepdims=True)
    interests = np.empty((cfg.n_days, u, 4), dtype=np.int16)
    interests[0] = interests0
    for day in range(1, cfg.n_days):
        cur = interests[day - 1].copy()
        drift = rng.random(u) < cfg.drift_prob
        slot = (rng.random(u) * k).astype(np.int64)
        new = _draw_subtopics(cfg, cat_logits, rng)
        rows = np.nonzero(drift)[0]
        cur[rows, slot[rows]] = new[rows]
        interests[day] = cur
    offset = rng.standard_normal((u, d)) * cfg.user_offset_norm / np.sqrt(d)
    return Population(
        age_band=age.astype(np.int64),
        gender=gender.astype(np.int64),
        region=region.astype(np.int64),
        tier=tier.astype(np.int64),
        interests=interests,
        weights=weights.astype(np.float32),
        offset=offset.astype(np.float32),
        sensitivity=np.exp(rng.normal(-0.5, 0.5, size=u)),
        scene_probs=rng.dirichlet(2.0 * np.ones(N_SCENES), size=u),
        device=rng.choice(N_DEVICES, size=u, p=[0.5, 0.4, 0.1]),
        peak_hour=rng.uniform(8, 22, size=u),
    )


def _draw_subtopics(
    cfg: WorldConfig, cat_logits: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A category by Gumbel-max over the logits, then a subtopic uniformly inside it."""
    g = rng.gumbel(size=cat_logits.shape)
    cat = np.argmax(cat_logits + g, axis=-1)
    sub = rng.integers(0, cfg.n_subtopics, size=cat.shape)
    return cat * cfg.n_subtopics + sub


def long_term_all_days(pop: Population, sub_centroid: np.ndarray) -> np.ndarray:
    """(n_days, U, d) long-term vectors; a helper for small worlds and tests."""
    return np.stack([pop.long_term(sub_centroid, d) for d in range(pop.interests.shape[0])])

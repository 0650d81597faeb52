"""`gpr world generate`: build the world, simulate every day, write the dataset atomically."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpr.core.config import WorldConfig
from gpr.core.io import atomic_dir, content_hash, write_json, write_parquet
from gpr.data.schema import EVENTS, ITEMS, USERS, schema_of
from gpr.market.ads import Ads, Users
from gpr.world.cascade import NO_AD, Served, run_logging_policy
from gpr.world.entities import Catalog, Population, make_catalog, make_population, make_taxonomy
from gpr.world.journeys import DayJourneys, simulate_day
from gpr.world.names import CATEGORY_NAMES, subtopic_name
from gpr.world.truth import REQUESTS, save_truth

FORMAT = "gpr-data/1"
ORDER = {"U": 0, "O": 1, "E": 2, "I": 3}


def split_of_day(cfg: WorldConfig, day: int) -> str:
    if day >= cfg.n_days - cfg.test_days:
        return "test"
    if day >= cfg.n_days - cfg.test_days - cfg.valid_days:
        return "valid"
    return "train"


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def users_table(pop: Population) -> pa.Table:
    cols = {
        "user_id": np.arange(pop.n_users),
        "age_band": pop.age_band,
        "gender": pop.gender,
        "region": pop.region,
        "activity_tier": pop.tier,
    }
    return pa.table({k: pa.array(v, type=USERS[k]) for k, v in cols.items()})


def items_table(cfg: WorldConfig, cat: Catalog) -> pa.Table:
    n, n_org = len(cat.subtopic), cat.n_organic

    def ads(values: np.ndarray, fill: float) -> np.ndarray:
        return np.concatenate([np.full(n_org, fill), values])

    category = cat.subtopic // cfg.n_subtopics
    attributes = [
        f"{CATEGORY_NAMES[c]}|{subtopic_name(c, s % cfg.n_subtopics)}"
        for c, s in zip(category.tolist(), cat.subtopic.tolist(), strict=True)
    ]
    cols: dict[str, Any] = {
        "item_id": np.arange(n),
        "kind": ["organic"] * n_org + ["ad"] * cat.n_ads,
        "title": cat.titles,
        "attributes": attributes,
        "category": category,
        "subtopic": cat.subtopic,
        "advertiser": ads(cat.advertiser, -1),
        "price": ads(cat.price, np.nan),
        "bid": ads(cat.bid, np.nan),
        "budget": ads(cat.budget, np.nan),
        "target_ages": ads(cat.target_ages, -1),
        "target_gender": ads(cat.target_gender, -1),
        "target_regions": ads(cat.target_regions, -1),
        "created_day": ads(cat.created_day, -1),
        "end_day": ads(cat.end_day, -1),
    }
    table = pa.table({k: pa.array(v, type=ITEMS[k]) for k, v in cols.items()})
    emb = pa.FixedSizeListArray.from_arrays(pa.array(cat.embedding.ravel()), cat.embedding.shape[1])
    return table.append_column("embedding", emb)


def day_events(
    cfg: WorldConfig,
    day: int,
    jour: DayJourneys,
    served: Served,
    first_request: int,
    n_organic: int,
) -> tuple[pa.Table, pa.Table]:
    """Events (O/E/I rows in journey order) and the hidden per-request truth rows of one day."""
    req_rows = np.nonzero(jour.is_request)[0]
    q = len(req_rows)
    # request ids follow time order across the day
    rank = np.empty(q, dtype=np.int64)
    rank[np.argsort(jour.req_ts, kind="stable")] = np.arange(q)
    rid = first_request + rank
    shown = served.ad != NO_AD
    # O and E rows as they are, plus one I row after every E row whose request showed an ad
    n = len(jour.user)
    ttype = np.where(jour.is_request, 2, 1)
    request = np.full(n, -1, dtype=np.int64)
    request[req_rows] = rid
    i_rows = req_rows[shown]
    pos = np.concatenate([np.arange(n) * 2, i_rows * 2 + 1])
    order = np.argsort(pos, kind="stable")

    def both(base: np.ndarray, extra: np.ndarray) -> np.ndarray:
        return np.concatenate([base, extra])[order]

    env = np.full(n, -1, dtype=np.int64)

    def env_col(values: np.ndarray) -> np.ndarray:
        col = env.copy()
        col[req_rows] = values
        return both(col, values[shown])

    types = np.asarray(["U", "O", "E", "I"])[both(ttype, np.full(len(i_rows), 3))]
    cols: dict[str, Any] = {
        "user_id": both(jour.user, jour.user[i_rows]),
        "timestamp": both(jour.ts, jour.ts[i_rows]),
        "day": np.full(len(pos), day),
        "token_type": types,
        "item_id": both(jour.item, served.ad[shown] + n_organic),
        "request_id": both(request, rid[shown]),
        "scene": env_col(jour.req_scene),
        "slot": env_col(jour.req_slot),
        "device": env_col(jour.req_device),
        "hour": env_col(jour.req_hour),
        "action": both(np.full(n, -1), served.action[shown]),
        "price": both(np.zeros(n), served.price[shown]),
        "split": np.full(len(pos), split_of_day(cfg, day)),
    }
    events = pa.table({k: pa.array(v, type=EVENTS[k]) for k, v in cols.items()})
    by_id = np.argsort(rid)
    truth = {
        "request_id": rid[by_id],
        "user_id": jour.req_user[by_id],
        "day": np.full(q, day),
        "slot": jour.req_slot[by_id],
        "scene": jour.req_scene[by_id],
        "device": jour.req_device[by_id],
        "session_subtopic": jour.req_topic[by_id],
    }
    return events, pa.table({k: pa.array(v, type=REQUESTS[k]) for k, v in truth.items()})


def _u_rows(cfg: WorldConfig, n_users: int) -> pa.Table:
    """One U token per user at the start of the journey (its fields live in users.parquet)."""
    cols: dict[str, Any] = {k: np.full(n_users, -1) for k in EVENTS}
    cols.update(
        user_id=np.arange(n_users),
        timestamp=np.zeros(n_users),
        day=np.zeros(n_users),
        token_type=np.full(n_users, "U"),
        price=np.zeros(n_users),
        split=np.full(n_users, split_of_day(cfg, 0)),
    )
    return pa.table({k: pa.array(v, type=EVENTS[k]) for k, v in cols.items()})


def generate_world(
    cfg: WorldConfig,
    seed: int,
    out: str | Path,
    preset: str = "custom",
    progress: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Generate the world into `out` (atomically) and return its manifest."""
    t0 = time.perf_counter()
    sub = make_taxonomy(cfg, _rng(seed, 0))
    cat = make_catalog(cfg, sub, _rng(seed, 1))
    pop = make_population(cfg, sub, _rng(seed, 2))
    stats: dict[str, Any] = {"days": []}
    counts = dict.fromkeys(ORDER, 0)
    with atomic_dir(out) as tmp:
        users_tab, items_tab = users_table(pop), items_table(cfg, cat)
        write_parquet(tmp / "users.parquet", users_tab)
        write_parquet(tmp / "items.parquet", items_tab)
        ad_attrs, user_attrs = Ads.from_items(items_tab), Users.from_table(users_tab)
        save_truth(tmp / "truth", cfg, cat, pop)
        ev_writer = pq.ParquetWriter(
            str(tmp / "events.parquet"), schema_of(EVENTS), compression="zstd"
        )
        rq_writer = pq.ParquetWriter(
            str(tmp / "truth" / "requests.parquet"), schema_of(REQUESTS), compression="zstd"
        )
        try:
            ev_writer.write_table(_u_rows(cfg, pop.n_users))
            counts["U"] += pop.n_users
            n_req = 0
            for day in range(cfg.n_days):
                jour = simulate_day(cfg, day, cat, pop, _rng(seed, 10, day))
                served = run_logging_policy(
                    cfg, day, cat, pop, jour, _rng(seed, 11, day), ad_attrs, user_attrs
                )
                events, requests = day_events(cfg, day, jour, served, n_req, cat.n_organic)
                ev_writer.write_table(events)
                rq_writer.write_table(requests)
                n_req += requests.num_rows
                day_stats = _day_stats(day, cat, jour, served, events)
                for t in ORDER:
                    counts[t] += day_stats["tokens"].get(t, 0)
                stats["days"].append(day_stats)
                if progress is not None:
                    progress(day, day_stats)
        finally:
            ev_writer.close()
            rq_writer.close()
        stats.update(_summary(stats["days"]))
        files = [tmp / "users.parquet", tmp / "items.parquet", tmp / "events.parquet"]
        manifest = {
            "format": FORMAT,
            "source": "world",
            "preset": preset,
            "seed": seed,
            "world": cfg.model_dump(mode="json"),
            "split": {
                "scheme": "days",
                "train_days": [d for d in range(cfg.n_days) if split_of_day(cfg, d) == "train"],
                "valid_days": [d for d in range(cfg.n_days) if split_of_day(cfg, d) == "valid"],
                "test_days": [d for d in range(cfg.n_days) if split_of_day(cfg, d) == "test"],
            },
            "rows": {
                "users": pop.n_users,
                "items": len(cat.subtopic),
                "organic": cat.n_organic,
                "ads": cat.n_ads,
                "events": sum(counts.values()),
                "requests": n_req,
                "tokens": counts,
            },
            "stats": stats,
            "content_hash": content_hash(files),
        }
        write_json(tmp / "manifest.json", manifest)
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    return manifest


def _day_stats(
    day: int, cat: Catalog, jour: DayJourneys, served: Served, events: pa.Table
) -> dict[str, Any]:
    shown = served.ad != NO_AD
    act = served.action[shown]
    types, n = np.unique(
        events.column("token_type").to_numpy(zero_copy_only=False), return_counts=True
    )
    active = cat.active(day)
    return {
        "day": day,
        "tokens": {str(t): int(c) for t, c in zip(types, n, strict=True)},
        "requests": len(served.ad),
        "impressions": int(shown.sum()),
        "clicks": int((act >= 1).sum()),
        "conversions": int((act == 2).sum()),
        "revenue": float((served.price[shown] * (act == 2)).sum()),
        "active_ads": int(active.sum()),
        "new_ads": int((cat.created_day == day).sum()),
        "budget_exhausted": served.exhausted,
    }


def _summary(days: list[dict[str, Any]]) -> dict[str, float]:
    imp = sum(d["impressions"] for d in days)
    clk = sum(d["clicks"] for d in days)
    conv = sum(d["conversions"] for d in days)
    exhausted = [d["budget_exhausted"] / max(d["active_ads"], 1) for d in days]
    return {
        "ctr": clk / max(imp, 1),
        "cvr": conv / max(clk, 1),
        "ctcvr": conv / max(imp, 1),
        "budget_exhausted_share": float(np.mean(exhausted)),
    }

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gpr.core.config import load_config
from gpr.core.errors import GprInputError
from gpr.core.io import file_sha256, read_json
from gpr.data.schema import load_dataset
from gpr.world import Truth, generate_world

FILES = [
    "users.parquet",
    "items.parquet",
    "events.parquet",
    "manifest.json",
    "truth/latents.safetensors",
    "truth/params.json",
    "truth/requests.parquet",
]


def _shown(root: Path) -> dict[str, np.ndarray]:
    ev = pq.read_table(root / "events.parquet")
    ev = ev.filter(pc.equal(ev.column("token_type"), "I"))
    return {
        k: ev.column(k).to_numpy()
        for k in ("user_id", "request_id", "item_id", "slot", "action", "day")
    }


def test_same_seed_gives_byte_identical_output(tiny_world: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny")
    generate_world(cfg.world, cfg.seed, tmp_path / "again", "tiny")
    for f in FILES:
        assert file_sha256(tiny_world / f) == file_sha256(tmp_path / "again" / f), f
    generate_world(cfg.world, cfg.seed + 1, tmp_path / "other", "tiny")
    assert (
        read_json(tmp_path / "other/manifest.json")["content_hash"]
        != read_json(tiny_world / "manifest.json")["content_hash"]
    )


def test_manifest_and_schema(tiny_world: Path) -> None:
    ds = load_dataset(tiny_world)
    m = ds.manifest
    assert m["rows"]["users"] == ds.users.num_rows == 200
    assert m["rows"]["events"] == ds.events.num_rows
    assert m["split"]["test_days"] == [3] and m["split"]["valid_days"] == [2]
    ttype = ds.col("events", "token_type").astype(str)
    assert set(np.unique(ttype)) == {"U", "O", "E", "I"}
    # every I token directly follows the E token of its request
    rid = ds.col("events", "request_id")
    i_rows = np.nonzero(ttype == "I")[0]
    assert (ttype[i_rows - 1] == "E").all() and (rid[i_rows - 1] == rid[i_rows]).all()
    # splits follow the days
    day, split = ds.col("events", "day"), ds.col("events", "split").astype(str)
    assert (split[day == 3] == "test").all() and (split[day <= 1] == "train").all()


def test_ctr_falls_with_slot(stat_world: Path) -> None:
    s = _shown(stat_world)
    truth = Truth.load(stat_world)
    ctr = truth.pctr(s["request_id"], s["item_id"])
    by_slot = [ctr[s["slot"] == k].mean() for k in (1, 2, 3, 4)]
    assert all(a > b for a, b in zip(by_slot, by_slot[1:], strict=False)), by_slot
    clicked = s["action"] >= 1
    assert clicked[s["slot"] == 1].mean() > clicked[s["slot"] >= 3].mean()


def test_conversions_only_after_clicks(stat_world: Path) -> None:
    s = _shown(stat_world)
    truth = Truth.load(stat_world)
    ctr = truth.pctr(s["request_id"], s["item_id"])
    cvr = truth.pcvr(s["request_id"], s["item_id"])
    conv = int((s["action"] == 2).sum())
    expected = float((ctr * cvr).sum())  # conversion needs a click first
    without_click = float(cvr.sum())  # what independent conversions would give
    assert abs(conv - expected) < 4 * np.sqrt(expected) + 2
    assert conv < 0.2 * without_click


def test_engaged_topics_match_interests(stat_world: Path) -> None:
    ds = load_dataset(stat_world)
    truth = Truth.load(stat_world)
    ttype = ds.col("events", "token_type").astype(str)
    action = ds.col("events", "action")
    engaged = (ttype == "O") | ((ttype == "I") & (action >= 1))
    users = ds.col("events", "user_id")[engaged]
    day = ds.col("events", "day")[engaged]
    item_cat = ds.col("items", "category")[ds.col("events", "item_id")[engaged]]
    n_sub = truth.cfg.n_subtopics
    interests = truth.interests[day, users]  # (n, 4) subtopics
    user_cats = np.where(interests >= 0, interests // n_sub, -1)
    hit = (user_cats == item_cat[:, None]).any(axis=1).mean()
    # chance: the catalogue share of the user's interest categories
    cat_share = (
        np.bincount(ds.col("items", "category"), minlength=truth.cfg.n_categories)
        / ds.items.num_rows
    )
    distinct = [np.unique(c[c >= 0]) for c in user_cats[:2000]]
    chance = float(np.mean([cat_share[c].sum() for c in distinct]))
    assert hit > 3 * chance, (hit, chance)


def test_new_ads_every_day_and_shown_only_while_eligible(stat_world: Path) -> None:
    ds = load_dataset(stat_world)
    created = ds.col("items", "created_day")
    end = ds.col("items", "end_day")
    kind = ds.col("items", "kind").astype(str)
    n_days = ds.manifest["world"]["n_days"]
    for d in range(1, n_days):
        assert ((kind == "ad") & (created == d)).sum() > 0
    s = _shown(stat_world)
    assert (created[s["item_id"]] <= s["day"]).all() and (s["day"] < end[s["item_id"]]).all()
    # targeting admits the user
    age = ds.col("users", "age_band")[s["user_id"]]
    reg = ds.col("users", "region")[s["user_id"]]
    ta = ds.col("items", "target_ages")[s["item_id"]].astype(np.int64)
    tr = ds.col("items", "target_regions")[s["item_id"]].astype(np.int64)
    assert (((ta >> age) & 1) == 1).all() and (((tr >> reg) & 1) == 1).all()


def test_truth_api(tiny_world: Path) -> None:
    truth = Truth.load(tiny_world)
    s = _shown(tiny_world)
    rid = s["request_id"][:10]
    ads = np.arange(truth.n_organic, truth.n_organic + 5)
    grid = np.broadcast_to(ads, (10, 5))
    p = truth.pctr(rid, grid)
    assert p.shape == (10, 5) and ((p > 0) & (p < 1)).all()
    # each row equals the 1-D call for that request
    np.testing.assert_allclose(p[3], truth.pctr(np.full(5, rid[3]), ads))
    v = truth.value(rid, grid)
    np.testing.assert_allclose(v, truth.bid[ads - truth.n_organic] * p * truth.pcvr(rid, grid))
    # the diagnostic terms sum to the pCTR logit
    terms = truth.ctr_terms(rid, grid)
    assert set(terms) == {"session", "long", "quality", "slot", "env", "bias"}
    np.testing.assert_allclose(sum(terms.values()), np.log(p / (1 - p)), rtol=1e-6, atol=1e-6)
    assert terms["session"].std() > 0 and terms["quality"].std() > 0
    with pytest.raises(GprInputError, match="not an ad"):
        truth.pctr(rid[:1], np.array([0]))
    with pytest.raises(GprInputError, match="unknown request"):
        truth.pctr(np.array([10**9]), ads[:1])


def test_logging_beats_random_and_oracle_beats_logging(stat_world: Path) -> None:
    from gpr.world.calibrate import calibrate

    c = calibrate(stat_world, n_requests=500)
    assert c["random"]["rpm"] < c["logging"]["rpm"] < c["oracle"]["rpm"]
    assert 0.002 < c["random"]["ctr"] < 0.01

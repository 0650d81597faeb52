"""The true-world evaluator: eligibility, journeys, built-in policies, the replay, its metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gpr.core.errors import GprInputError
from gpr.core.io import content_hash, write_parquet
from gpr.core.metrics import auc, gauc
from gpr.data.schema import EVENTS, ITEMS, USERS
from gpr.eval.simulate import SimData, replay, simulate
from gpr.market.ads import eligible_mask
from gpr.market.journeys import LogData
from gpr.policy.builtins import Logging, Oracle, RandomEligible, load_policy

# --- a hand-made world: 2 users, 3 organic items, ads A (3), B (4), C (5), 3 test requests --------
A, B, C = 3, 4, 5
# true pCTR / pCVR per (request, ad A, B, C)
PCTR = np.array([[0.1, 0.1, 0.2], [0.05, 0.2, 0.1], [0.1, 0.1, 0.2]])
PCVR = np.array([[0.5, 0.2, 0.5], [0.5, 0.5, 0.5], [0.5, 0.2, 0.5]])
BID = np.array([10.0, 5.0, 20.0])


class FakeTruth:
    n_organic = 3
    bid = BID

    def pctr(self, rid: np.ndarray, ads: np.ndarray) -> np.ndarray:
        return PCTR[
            np.broadcast_to(rid[..., None] if ads.ndim > rid.ndim else rid, ads.shape), ads - 3
        ]

    def pcvr(self, rid: np.ndarray, ads: np.ndarray) -> np.ndarray:
        return PCVR[
            np.broadcast_to(rid[..., None] if ads.ndim > rid.ndim else rid, ads.shape), ads - 3
        ]

    def value(self, rid: np.ndarray, ads: np.ndarray) -> np.ndarray:
        return BID[ads - 3] * self.pctr(rid, ads) * self.pcvr(rid, ads)


def _table(cols: dict[str, list], schema: dict[str, pa.DataType]) -> pa.Table:
    return pa.table({k: pa.array(v, type=schema[k]) for k, v in cols.items()})


def make_hand_world(root: Path, budget_a: float = 0.5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_parquet(
        root / "users.parquet",
        _table(
            {
                "user_id": [0, 1],
                "age_band": [1, 2],
                "gender": [0, 1],
                "region": [0, 1],
                "activity_tier": [0, 2],
            },
            USERS,
        ),
    )
    nan = float("nan")
    items = {
        "item_id": [0, 1, 2, A, B, C],
        "kind": ["organic"] * 3 + ["ad"] * 3,
        "title": ["o0", "o1", "o2", "ad A", "ad B", "ad C"],
        "attributes": ["x"] * 6,
        "category": [0, 0, 1, 0, 1, 1],
        "subtopic": [0, 1, 2, 0, 2, 2],
        "advertiser": [-1, -1, -1, 0, 1, 2],
        "price": [nan, nan, nan, 50.0, 20.0, 100.0],
        "bid": [nan, nan, nan, *BID],
        "budget": [nan, nan, nan, budget_a, 100.0, 100.0],
        "target_ages": [-1, -1, -1, 31, 31, 31],
        "target_gender": [-1, -1, -1, -1, -1, 1],  # C targets gender 1 only (user 1)
        "target_regions": [-1, -1, -1, 63, 63, 63],
        "created_day": [-1, -1, -1, -5, -5, 0],  # C is new
        "end_day": [-1, -1, -1, 10, 10, 10],
    }
    t = _table(items, ITEMS)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.eye(6, 4).ravel(), pa.float32()), 4)
    write_parquet(root / "items.parquet", t.append_column("embedding", emb))
    # per user in time order: U, O, E(r), I(r) ...; request 2 showed nothing in the logs
    rows = [
        # user, ts, type, item, request, action
        (0, 0, "U", -1, -1, -1),
        (0, 50, "O", 0, -1, -1),
        (0, 100, "E", -1, 0, -1),
        (0, 100, "I", B, 0, 0),
        (0, 250, "O", 1, -1, -1),
        (0, 300, "E", -1, 2, -1),
        (1, 0, "U", -1, -1, -1),
        (1, 150, "O", 2, -1, -1),
        (1, 200, "E", -1, 1, -1),
        (1, 200, "I", A, 1, 1),
    ]
    env = [r[2] in "EI" for r in rows]
    ev = {
        "user_id": [r[0] for r in rows],
        "timestamp": [r[1] for r in rows],
        "day": [0] * len(rows),
        "token_type": [r[2] for r in rows],
        "item_id": [r[3] for r in rows],
        "request_id": [r[4] for r in rows],
        "scene": [0 if e else -1 for e in env],
        "slot": [1 if e else -1 for e in env],
        "device": [0 if e else -1 for e in env],
        "hour": [0 if e else -1 for e in env],
        "action": [r[5] for r in rows],
        "price": [0.0] * len(rows),
        "split": ["test"] * len(rows),
    }
    write_parquet(root / "events.parquet", _table(ev, EVENTS))
    files = [root / f"{n}.parquet" for n in ("users", "items", "events")]
    manifest = {
        "format": "gpr-data/1",
        "split": {"scheme": "days", "train_days": []},
        "content_hash": content_hash(files),
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture()
def hand(tmp_path: Path) -> SimData:
    return SimData(LogData.load(make_hand_world(tmp_path / "hand")), FakeTruth())  # type: ignore[arg-type]


def test_oracle_picks_the_known_optimum(hand: SimData) -> None:
    res = simulate(Oracle(hand.truth), hand)
    # r0: A (0.5; C is not targeted at user 0); r1: C (1.0); r2: A is out of budget -> B (0.1)
    rep = replay(Oracle(hand.truth), hand)
    assert rep.ad.tolist() == [A, C, B]
    assert res["rpm"] == pytest.approx(1000 * (0.5 + 1.0 + 0.1) / 3)
    assert res["ctr"] == pytest.approx((0.1 + 0.1 + 0.1) / 3)
    assert res["cvr"] == pytest.approx((0.05 + 0.05 + 0.02) / 0.3)
    assert res["gmv_per_mille"] == pytest.approx(1000 * (0.05 * 50 + 0.05 * 100 + 0.02 * 20) / 3)
    assert res["advertiser_roi"] == pytest.approx((2.5 + 5 + 0.4) / 1.6)
    assert res["budget_overspend"] == 0.0
    seg = res["segments"]
    assert seg["new_ads"]["n_requests"] == 1 and seg["new_ads"]["rpm"] == pytest.approx(1000.0)
    assert seg["new_ads"]["revenue_share"] == pytest.approx(1.0 / 1.6)
    assert seg["old_ads"]["impression_share"] == pytest.approx(2 / 3)
    assert seg["tier_low"]["rpm"] == pytest.approx(1000 * 0.6 / 2)  # user 0: r0 and r2
    assert seg["tier_high"]["rpm"] == pytest.approx(1000.0)
    assert seg["tier_mid"]["n_requests"] == 0 and seg["tier_mid"]["rpm"] == 0.0


def test_logging_replays_the_logs_and_overspend_is_one_impression(tmp_path: Path) -> None:
    data = SimData(LogData.load(make_hand_world(tmp_path / "h", budget_a=0.3)), FakeTruth())  # type: ignore[arg-type]
    res = simulate(Logging(), data)
    # logs showed B for r0 and A for r1, nothing for r2
    assert res["rpm"] == pytest.approx(1000 * (0.1 + 0.25) / 3)
    assert res["fill_rate"] == pytest.approx(2 / 3)
    res = simulate(Oracle(data.truth), data)
    # A (budget 0.3) takes one impression worth 0.5: 0.2 over, less than one impression
    assert res["budget_overspend"] == pytest.approx(0.2 / 0.3)
    assert 0 < res["max_overspend_impressions"] <= 1


def test_journeys_history_is_strictly_before(hand: SimData) -> None:
    j = hand.journeys
    pos = j.positions(np.array([0, 1, 2]))
    idx = j.last(pos, 4)
    items = np.where(idx >= 0, j.item[np.maximum(idx, 0)], -9)
    types = np.where(idx >= 0, j.ttype[np.maximum(idx, 0)], -9)
    assert items[0].tolist() == [-9, -9, -1, 0]  # U, O0
    assert types[2].tolist() == [1, 2, 3, 1]  # O0 E(r0) I(r0) O1: never r2's own tokens
    o = j.last(pos, 2, ("O",))
    assert j.item[o[2]].tolist() == [0, 1] and o[1, 0] == -1
    i = j.last(pos, 1, ("I",))
    assert j.item[i[2]].tolist() == [B] and i[0, 0] == -1 and i[1, 0] == -1
    assert j.item[j.shown(np.array([1]))].tolist() == [A] and j.shown(np.array([2]))[0] == -1
    with pytest.raises(GprInputError, match="unknown request"):
        j.positions(np.array([99]))


def test_eligibility(hand: SimData) -> None:
    m = eligible_mask(hand.ads, hand.users, np.array([0, 1, 1]), np.array([0, 0, 10]))
    assert m.tolist() == [[True, True, False], [True, True, True], [False, False, False]]
    spend = np.array([1.0, 0.0, 0.0])
    assert eligible_mask(hand.ads, hand.users, np.array([1]), np.array([0]), spend).tolist() == [
        [False, True, True]
    ]


def test_policy_shapes_and_padding(hand: SimData) -> None:
    from gpr.market.policy import RequestBatch

    j = hand.journeys
    pos = j.requests("test")
    elig = eligible_mask(hand.ads, hand.users, j.user[pos], j.day[pos])
    batch = RequestBatch.at(pos, j, hand.ads, hand.users, elig, m=5)
    for pol in (RandomEligible(0), Logging(), Oracle(hand.truth)):
        r = pol.rank(batch)
        assert r.ads.shape == (3, 5) and r.values.shape == (3, 5) and r.ads.dtype == np.int64
        n = (r.ads >= 0).sum(1)
        assert (n <= elig.sum(1)).all()
        assert (r.ads[:, 3:] == -1).all() and np.isnan(r.values[r.ads < 0]).all()
        # no ad twice, only eligible ads
        for row, ok in zip(r.ads, elig, strict=True):
            shown = row[row >= 0]
            assert len(set(shown.tolist())) == len(shown)
            assert ok[hand.ads.index_of(shown)].all()
    o = Oracle(hand.truth).rank(batch)
    assert o.ads[1, :3].tolist() == [C, B, A]  # values 1.0, 0.5, 0.25


def test_bad_spec(tmp_path: Path, hand: SimData) -> None:
    with pytest.raises(GprInputError, match="unknown policy"):
        load_policy("best-policy-ever", hand.root)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model": "nope"}))
    with pytest.raises(GprInputError, match="unknown model"):
        load_policy(run, hand.root)
    (run / "run.json").write_text("{")
    with pytest.raises(GprInputError, match="invalid JSON"):
        load_policy(run, hand.root)
    with pytest.raises(GprInputError, match="unknown split"):
        simulate(RandomEligible(0), hand, split="tomorrow")


def test_auc_known_answers() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(np.array([0, 1, 0, 1]), np.ones(4)) == pytest.approx(0.5)  # ties count one half
    assert auc(np.array([0, 1, 1]), np.array([0.2, 0.2, 0.9])) == pytest.approx(0.75)
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))
    rng = np.random.default_rng(0)
    y, s = rng.random(500) < 0.3, rng.random(500)
    from sklearn.metrics import roc_auc_score

    assert auc(y, s) == pytest.approx(roc_auc_score(y, s))
    # GAUC: group a perfect (2 samples), group b inverted (4 samples), group c one class (ignored)
    g = gauc(
        np.array([0, 1, 0, 0, 1, 1, 1]),
        np.array([0.1, 0.9, 0.9, 0.8, 0.1, 0.2, 0.5]),
        np.array(["a", "a", "b", "b", "b", "b", "c"]),
    )
    assert g == pytest.approx((2 * 1.0 + 4 * 0.0) / 6)


# --- the generated tiny worlds -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_world: Path) -> SimData:
    return SimData.load(tiny_world)


def test_oracle_fast_path_equals_truth(tiny: SimData) -> None:
    from gpr.market.policy import RequestBatch

    j = tiny.journeys
    pos = j.requests("test")[:50]
    elig = eligible_mask(tiny.ads, tiny.users, j.user[pos], j.day[pos])
    batch = RequestBatch.at(pos, j, tiny.ads, tiny.users, elig)
    fast = Oracle(tiny.truth).true_values(batch)
    grid = np.broadcast_to(tiny.ads.item_id, elig.shape)
    np.testing.assert_allclose(fast, tiny.truth.value(batch.request_ids, grid), rtol=1e-5)


def test_budgets_never_overspent_beyond_one_impression(tiny: SimData) -> None:
    tight = replace(
        tiny, logs=replace(tiny.logs, ads=replace(tiny.ads, budget=tiny.ads.budget * 0.002))
    )
    for pol in (Oracle(tiny.truth), RandomEligible(1)):
        rep = replay(pol, tight, batch_size=64)
        shown = rep.ad >= 0
        a = tight.ads.index_of(rep.ad[shown])
        day, val = rep.day[shown], rep.value[shown]
        hit = 0
        for d in np.unique(day):
            spend = np.zeros(tight.ads.n)
            for k, v in zip(a[day == d], val[day == d], strict=True):
                assert spend[k] < tight.ads.budget[k]  # shown only while budget was left
                spend[k] += v
            hit += int((spend >= tight.ads.budget).sum())
        assert hit > 0  # the budgets did bind
        assert rep.max_over_ratio <= 1.0
        res = simulate(pol, tight, batch_size=64)
        assert res["budget_overspend"] > 0 and res["max_overspend_impressions"] <= 1.0


def test_oracle_beats_logging_beats_random(tiny: SimData) -> None:
    rpm = {
        p.name: simulate(p, tiny)["rpm"] for p in (RandomEligible(0), Logging(), Oracle(tiny.truth))
    }
    assert rpm["random-eligible"] < rpm["logging"] < rpm["oracle"]
    for spec in ("random-eligible", "logging", "oracle"):
        assert load_policy(spec, tiny.root).name == spec


def test_simulate_result_keys(tiny: SimData, tmp_path: Path) -> None:
    from gpr.eval.simulate import simulate_spec

    out = tmp_path / "sim.json"
    res = simulate_spec("random-eligible", tiny.root, "test", out=out, max_requests=100)
    keys = {
        "rpm",
        "ctr",
        "cvr",
        "ctcvr",
        "gmv_per_mille",
        "advertiser_roi",
        "budget_overspend",
        "n_requests",
        "segments",
        "seconds",
    }
    assert keys <= set(res) and res["n_requests"] == 100
    assert set(res["segments"]) == {"new_ads", "old_ads", "tier_low", "tier_mid", "tier_high"}
    for seg in res["segments"].values():
        assert {
            "rpm",
            "ctr",
            "cvr",
            "ctcvr",
            "gmv_per_mille",
            "advertiser_roi",
            "n_requests",
        } <= set(seg)
    assert json.loads(out.read_text())["rpm"] == pytest.approx(res["rpm"])
    # segment request counts add up
    s = res["segments"]
    assert (
        s["tier_low"]["n_requests"] + s["tier_mid"]["n_requests"] + s["tier_high"]["n_requests"]
        == 100
    )
    assert s["new_ads"]["n_shown"] + s["old_ads"]["n_shown"] == res["n_shown"]

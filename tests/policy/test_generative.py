"""A trained generative run plays the true-world replay: only eligible ads, every request served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpr.core.config import load_config
from gpr.core.errors import GprInputError
from gpr.eval.simulate import SimData, simulate_spec
from gpr.market.policy import RequestBatch
from gpr.model.hte import HTE, SESSION_FEATURES, SIDE_FEATURES, side_width
from gpr.model.journey import Batch, E, I, O, U
from gpr.policy.builtins import load_policy
from gpr.policy.generative import GenerativePolicy
from gpr.policy.hte_features import ItemTopics, hte_side_features, session_side_features
from gpr.train.mtp import train


@pytest.fixture(scope="module")
def tiny_run(tiny_world: Path, tiny_sids: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config("tiny", overrides=["train.epochs=1"])
    run = tmp_path_factory.mktemp("serve") / "run"
    train(tiny_world, tiny_sids, cfg, run, "gpr", progress=False)
    return run


def test_gpr_run_is_a_policy(tiny_world: Path, tiny_run: Path) -> None:
    res = simulate_spec(tiny_run, tiny_world, "test", max_requests=300)
    assert res["policy"].startswith("gpr:")
    assert res["ineligible_ranked"] == 0 and res["max_overspend_impressions"] <= 1
    assert res["n_shown"] == res["requests_with_eligible"] and res["rpm"] > 0
    oracle = simulate_spec("oracle", tiny_world, "test", max_requests=300)
    assert oracle["rpm"] >= res["rpm"]


def test_log_bid_term_adds_log_bid_to_the_log_probability(tiny_world: Path, tiny_run: Path) -> None:
    data = SimData.load(tiny_world)
    pos = data.journeys.requests("test")[:48]
    elig = np.ones((len(pos), data.ads.n), dtype=bool)
    batch = RequestBatch.at(pos, data.journeys, data.ads, data.logs.users, elig, m=1000)
    plain = GenerativePolicy(tiny_run, tiny_world).rank(batch)
    tilted = GenerativePolicy(tiny_run, tiny_world, overrides=["serve.score.log_bid=0.7"])
    assert tilted.name.endswith("+logp1+log_bid0.7")
    got = tilted.rank(batch)
    bid = dict(zip(data.ads.item_id.tolist(), data.ads.bid.tolist(), strict=True))
    n_moved = 0
    for r in range(len(pos)):
        base = {a: v for a, v in zip(plain.ads[r], plain.values[r], strict=True) if a >= 0}
        ads = [a for a in got.ads[r] if a >= 0]
        assert sorted(ads) == sorted(base)  # the same candidates, re-ordered
        want = [base[a] + 0.7 * np.log(bid[a]) for a in ads]
        np.testing.assert_allclose(got.values[r][: len(ads)], want, rtol=1e-5, atol=1e-5)
        assert (np.diff(want) <= 1e-6).all()  # best first
        n_moved += ads != [a for a in plain.ads[r] if a >= 0]
    assert n_moved > 0


def test_log_hte_value_term_adds_log_hte_value(tiny_world: Path, tiny_run: Path) -> None:
    data = SimData.load(tiny_world)
    pos = data.journeys.requests("test")[:32]
    elig = np.ones((len(pos), data.ads.n), dtype=bool)
    batch = RequestBatch.at(pos, data.journeys, data.ads, data.logs.users, elig, m=1000)
    plain_pol = GenerativePolicy(tiny_run, tiny_world)
    plain = plain_pol.rank(batch)
    tilted = GenerativePolicy(tiny_run, tiny_world, overrides=["serve.score.log_hte_value=2"])
    assert tilted.name.endswith("+logp1+log_hte_value2")
    got = tilted.rank(batch)
    # the HTE value of every candidate, computed independently through the model's own heads
    cfg = plain_pol.model.cfg
    b = plain_pol.prep.at_requests(
        plain_pol.prep.positions(batch.request_ids), cfg.max_len, getattr(cfg, "thought_tokens", 0)
    )
    items = torch.from_numpy(plain.ads)
    codes = torch.from_numpy(plain_pol.prep.sids.codes[items.clamp(min=0).numpy()])
    with torch.no_grad():
        ctr, cvr = plain_pol.model.hte_probs(b, codes)  # type: ignore[operator]
    bid = dict(zip(data.ads.item_id.tolist(), data.ads.bid.tolist(), strict=True))
    for r in range(len(pos)):
        val = {
            a: (lp, bid[a] * float(ctr[r, k]) * float(cvr[r, k]))
            for k, (a, lp) in enumerate(zip(plain.ads[r], plain.values[r], strict=True))
            if a >= 0
        }
        ads = [a for a in got.ads[r] if a >= 0]
        assert sorted(ads) == sorted(val)
        want = [val[a][0] + 2 * np.log(val[a][1]) for a in ads]
        np.testing.assert_allclose(got.values[r][: len(ads)], want, rtol=1e-4, atol=1e-4)
        assert (np.diff(want) <= 1e-5).all()


def test_serve_overrides_are_checked(tiny_world: Path, tiny_run: Path) -> None:
    with pytest.raises(GprInputError, match="serve.score.log_bid"):
        load_policy(tiny_run, tiny_world, overrides=["serve.score.log_bid=-1"])
    with pytest.raises(GprInputError, match="only serve"):
        load_policy(tiny_run, tiny_world, overrides=["train.lr=1"])
    with pytest.raises(GprInputError, match="do not apply"):
        load_policy("oracle", tiny_world, overrides=["serve.score.log_bid=1"])


def test_hte_side_features_by_hand(tiny_world: Path, tiny_run: Path) -> None:
    data = SimData.load(tiny_world)
    pos = data.journeys.requests("test")[:16]
    pol = GenerativePolicy(tiny_run, tiny_world)
    cfg = pol.model.cfg
    b = pol.prep.at_requests(pol.prep.positions(data.journeys.request[pos]), cfg.max_len, 0)
    ads = data.ads
    items = torch.tensor([[int(ads.item_id[0]), int(ads.item_id[5]), -1]] * len(pos))
    days = np.full(len(pos), 2)
    x = hte_side_features(b, items, ads, days)
    assert x.shape == (len(pos), 3, len(SIDE_FEATURES))
    assert (x[:, 2] == 0).all()  # padding
    col = {k: i for i, k in enumerate(SIDE_FEATURES)}
    n_with_history = 0
    for r in range(len(pos)):
        br, t = int(b.pred_b[r]), int(b.pred_t[r])
        shown = [
            int(b.item[br, k]) for k in range(t) if int(b.ttype[br, k]) == I and b.item[br, k] >= 0
        ]
        lps = [np.log(ads.price[ads.index_of(np.array([a]))[0]]) - 3.5 for a in shown]
        user = float(np.mean(lps)) if lps else 0.0
        n_with_history += bool(lps)
        for k, a in enumerate((0, 5)):
            lp = np.log(ads.price[a]) - 3.5
            age = max(2 - int(ads.created_day[a]), 0)
            want = {
                "log_price": lp,
                "log_bid": np.log(ads.bid[a]) - 2.1,
                "new_ad": float(age <= 3),
                "log_age": np.log1p(age),
                "user_log_price": user,
                "user_has_ads": float(bool(lps)),
                "price_match": user * lp,
            }
            for name, v in want.items():
                assert float(x[r, k, col[name]]) == pytest.approx(v, abs=1e-5), name
    assert n_with_history > 0  # the fixture exercises the history part


def _hand_batch(ttype: list[int], item: list[int], ts: list[int], pred_t: list[int]) -> Batch:
    """One journey row with the given tokens; a prediction at each of `pred_t`."""
    t, p = len(ttype), len(pred_t)
    z = torch.zeros(1, t, dtype=torch.long)
    zp = torch.zeros(p, dtype=torch.long)
    return Batch(
        ttype=torch.tensor([ttype]),
        codes=torch.zeros(1, t, 3, dtype=torch.long),
        field=torch.zeros(1, t, 4, dtype=torch.long),
        action=z,
        item=torch.tensor([item]),
        pred_b=zp,
        pred_t=torch.tensor(pred_t),
        targets=torch.zeros(p, 1, dtype=torch.long),
        target_codes=torch.zeros(p, 1, 4, dtype=torch.long),
        shown_action=zp,
        request=zp,
        position=zp,
        ts=torch.tensor([ts]),
    )


def test_session_side_features_by_hand() -> None:
    """Views at 0, 1000, 1100 (an ad impression between), 1150 s; a request at 1200 s. The
    current session (pauses <= 300 s) holds the last three views: subtopics 2, 2, 3."""
    # item id -> subtopic / category: items 0..3 organic (subtopics 1, 2, 2, 3), 4..6 ads
    sub, cat = np.array([1, 2, 2, 3, 2, 3, 9]), np.array([0, 1, 1, 1, 1, 1, 5])
    topics = ItemTopics(subtopic=sub, category=cat)
    b = _hand_batch(
        ttype=[U, O, O, I, O, O, E, -1],
        item=[-1, 0, 1, 4, 2, 3, -1, -1],
        ts=[0, 0, 1000, 1050, 1100, 1150, 1200, 0],
        pred_t=[6, 2],
    )
    items = torch.tensor([[4, 5, 6, -1], [4, 5, 6, -1]])  # ad subtopics 2, 3, 9
    x = session_side_features(b, items, topics)
    assert x.shape == (2, 4, len(SESSION_FEATURES))
    col = {k: i for i, k in enumerate(SESSION_FEATURES)}
    # request at token 6: session views = items 1, 2, 3 (subtopics 2, 2, 3; all category 1);
    # the window's views = items 0..3 (subtopics 1, 2, 2, 3)
    np.testing.assert_allclose(x[0, :3, col["session_sub_share"]], [2 / 3, 1 / 3, 0], atol=1e-6)
    np.testing.assert_allclose(x[0, :3, col["session_cat_share"]], [1, 1, 0], atol=1e-6)
    np.testing.assert_allclose(x[0, :3, col["window_sub_share"]], [2 / 4, 1 / 4, 0], atol=1e-6)
    np.testing.assert_allclose(x[0, :3, col["session_log_views"]], [np.log(4)] * 3, atol=1e-6)
    # prediction at token 2 (its own time 1000 s): views item 0 (1000 s before) and item 1
    np.testing.assert_allclose(x[1, :3, col["session_sub_share"]], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(x[1, :3, col["window_sub_share"]], [1 / 2, 0, 0], atol=1e-6)
    np.testing.assert_allclose(x[1, :3, col["session_log_views"]], [np.log(2)] * 3, atol=1e-6)
    assert (x[:, 3] == 0).all()  # padding
    assert side_width(True, True) == len(SIDE_FEATURES) + len(SESSION_FEATURES)
    assert side_width(True, False) == len(SIDE_FEATURES) and side_width(False, True) == 0


def test_hte_wide_part_starts_at_zero_and_is_required() -> None:
    torch.manual_seed(0)
    hte = HTE(8, 3)
    h, pre = torch.randn(5, 8), torch.randn(5, 3, 8)
    before = hte(h, pre)
    hte.add_side(len(SIDE_FEATURES))
    side = torch.randn(5, len(SIDE_FEATURES))
    after = hte(h, pre, side)
    for k in ("ctr", "cvr", "value"):
        torch.testing.assert_close(after[k], before[k])  # zero start: the same outputs
    with torch.no_grad():
        hte.side_cvr.weight[0, 0] = 1.0
    moved = hte(h, pre, side)
    torch.testing.assert_close(moved["cvr"] - before["cvr"], side[:, 0])
    torch.testing.assert_close(moved["ctr"], before["ctr"])
    with pytest.raises(ValueError, match="side features"):
        hte(h, pre)
    with pytest.raises(ValueError, match="side features"):
        HTE(8, 3)(h, pre, side)

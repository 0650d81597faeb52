"""The cascade baseline: features, auction, a few training steps on tiny, a loadable run dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gpr.cascade.auction import run_auction
from gpr.cascade.config import CascadeConfig, cascade_config
from gpr.cascade.features import Catalog, request_features, session_mean
from gpr.cascade.train import evaluate_ranking, train_cascade
from gpr.core.errors import GprInputError
from gpr.eval.simulate import SimData, simulate
from gpr.market.journeys import LogData
from gpr.policy.builtins import Logging, Oracle, RandomEligible, load_policy

FAST = {"epochs": 1, "wide_epochs": 2, "retrieval_epochs": 1}


@pytest.fixture(scope="module")
def run(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cascade") / "run"
    train_cascade(tiny_world, cascade_config("tiny", **FAST), 0, out)
    return out


def test_config_is_strict() -> None:
    assert cascade_config("small").retrieval_k == 200
    with pytest.raises(Exception, match="extra"):
        CascadeConfig.model_validate({"dimm": 3})
    with pytest.raises(GprInputError, match="unknown preset"):
        cascade_config("huge")


def test_auction_second_price() -> None:
    bid = np.array([[10.0, 5.0, 20.0, 1.0]])
    pctr = np.array([[0.1, 0.2, 0.1, 0.5]])
    pcvr = np.array([[0.5, 0.5, 0.1, 0.1]])
    valid = np.array([[True, True, True, False]])
    r = run_auction(bid, pctr, pcvr, valid)
    # eCPM: 500, 500, 200, invalid -> order 0, 1, 2 (stable on ties), 3 last
    assert r.order[0].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(r.ecpm[0, :3], [500.0, 500.0, 200.0])
    # winner pays the bid that ties the runner-up: 500 / (0.05 * 1000) = 10 (= its bid)
    # second pays 200 / (0.1 * 1000) = 2; the last valid one pays the reserve 0.1 * 20
    np.testing.assert_allclose(r.price[0, :3], [10.0, 2.0, 2.0])
    assert np.isnan(r.price[0, 3]) and (r.price[0, :3] <= bid[0, r.order[0, :3]]).all()


def test_features_use_only_the_past(tiny_world: Path) -> None:
    logs = LogData.load(tiny_world)
    cat = Catalog.from_logs(logs)
    j = logs.journeys
    pos = j.requests("test")[:40]
    f = request_features(j, logs.users, cat, pos, 5, 5, 30)
    assert f.o_item.shape == (40, 5) and f.l_sub.shape == (40, 30) and f.l_mean.shape[0] == 40
    # every history token happened before the request (timestamps) and is not the request's own I
    o = j.last(pos, 5, ("O",))
    assert (j.ts[o[o >= 0]] <= np.repeat(j.ts[pos], (o >= 0).sum(1))).all()
    i = j.last(pos, 5, ("I",))
    own = (j.request[np.maximum(i, 0)] == j.request[pos][:, None]) & (i >= 0)
    assert not own.any() and (i < pos[:, None]).all()
    # chunked computation equals the one-shot one
    g = request_features(j, logs.users, cat, pos, 5, 5, 30, chunk=7)
    for k, v in f.__dict__.items():
        np.testing.assert_array_equal(v, getattr(g, k))


def test_training_writes_a_loadable_run_and_loss_falls(run: Path, tiny_world: Path) -> None:
    meta = json.loads((run / "run.json").read_text())
    assert meta["model"] == "cascade" and meta["seed"] == 0
    assert (run / "ranking.safetensors").exists() and (run / "retrieval.safetensors").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    wide = [r for r in rows if r["stage"] == "ranking-wide"]
    assert wide[0]["first_loss"] > wide[-1]["last_loss"]  # the loss falls
    assert {"ranking-wide", "ranking-deep", "retrieval"} <= {r["stage"] for r in rows}
    ev = evaluate_ranking(run, tiny_world, "test")
    assert {"auc_ctr", "gauc_ctr", "auc_cvr", "n_impressions"} <= set(ev)
    assert ev["n_impressions"] > 0 and 0.0 <= ev["auc_ctr"] <= 1.0


def test_cascade_policy_and_oracle_bound(run: Path, tiny_world: Path) -> None:
    data = SimData.load(tiny_world)
    pol = load_policy(run, tiny_world)
    assert pol.name == "cascade"
    res = {
        p.name: simulate(p, data) for p in (pol, RandomEligible(0), Logging(), Oracle(data.truth))
    }
    assert res["cascade"]["ineligible_ranked"] == 0 and res["cascade"]["n_shown"] > 0
    for name in ("cascade", "random-eligible", "logging"):
        assert res["oracle"]["rpm"] >= res[name]["rpm"], name
    # deterministic: same run, same replay
    again = simulate(load_policy(run, tiny_world), data)
    assert again["rpm"] == pytest.approx(res["cascade"]["rpm"])


def test_training_is_deterministic(tiny_world: Path, tmp_path: Path, run: Path) -> None:
    cfg = cascade_config("tiny", **FAST)
    train_cascade(tiny_world, cfg, 0, tmp_path / "again")
    from safetensors.torch import load_file

    a, b = (
        load_file(str(run / "ranking.safetensors")),
        load_file(str(tmp_path / "again" / "ranking.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_run_on_another_catalog_is_refused(run: Path, tmp_path: Path) -> None:
    from gpr.core.config import load_config
    from gpr.world import generate_world

    cfg = load_config(
        "tiny", overrides=["world.n_users=50", "world.n_organic=300", "world.n_ads=60"]
    )
    other = generate_world(cfg.world, 3, tmp_path / "other", "tiny") and tmp_path / "other"
    with pytest.raises(GprInputError, match="another catalog"):
        load_policy(run, other)


def test_ad_stats_use_only_earlier_days(tiny_world: Path) -> None:
    from gpr.cascade.features import ad_stats

    logs = LogData.load(tiny_world)
    s = ad_stats(logs.journeys, logs.ads)
    n_days = int(logs.journeys.day.max()) + 1
    assert s.shape == (n_days + 1, logs.ads.n, 4)
    np.testing.assert_allclose(s[0], 0.0, atol=1e-6)  # nothing is known before day 0
    # day 1 knows exactly the impressions of day 0
    j = logs.journeys
    rows = np.nonzero((j.ttype == 3) & (j.day == 0))[0]
    shown0 = np.unique(logs.ads.index_of(j.item[rows]))
    assert (s[1, shown0, 0] > 0).all()
    assert (s[1, np.setdiff1d(np.arange(logs.ads.n), shown0), 0] == 0).all()


def test_session_mean_by_hand() -> None:
    content = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])  # row 0 = padding
    r = {
        "o_item": torch.tensor([[1, 2, 3], [0, 0, 3], [1, 2, 0]]),
        # item 1 of request 0 is from an older session; request 2 has no session views
        "o_sess": torch.tensor([[False, True, True], [True, True, True], [False] * 3]),
    }
    x, n = session_mean(content, r)
    torch.testing.assert_close(x, torch.tensor([[2.0, 3.0], [4.0, 4.0], [0.0, 0.0]]))
    assert n[:, 0].tolist() == [2, 1, 0]

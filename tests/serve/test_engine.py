"""The inference engine: a run served alone gives the replay's ads, inside the live catalogue."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gpr.core.errors import GprInputError
from gpr.market.ads import eligible_mask
from gpr.market.journeys import LogData
from gpr.market.policy import RequestBatch
from gpr.policy.generative import GenerativePolicy
from gpr.serve.engine import Engine, Event, logged_requests


@pytest.fixture(scope="module")
def logs(tiny_world: Path) -> LogData:
    return LogData.load(tiny_world)


@pytest.fixture(scope="module")
def served(runs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run moved away from everything it was trained from."""
    out = tmp_path_factory.mktemp("served") / "run"
    shutil.copytree(runs[0], out)
    return out


def _test_day(logs: LogData, n: int) -> tuple[np.ndarray, int]:
    j = logs.journeys
    pos = j.requests("test")[:n]
    return j.request[pos], int(j.day[pos[0]])


def test_served_ads_equal_the_replay_generation(
    served: Path, tiny_world: Path, logs: LogData
) -> None:
    """Same run, same requests, same beam: the engine ranks exactly the ads and log p of the
    offline policy (which reads the dataset's token streams)."""
    ids, day = _test_day(logs, 24)
    engine = Engine.from_run(served, day=day)
    recs = engine.recommend(logged_requests(logs, ids, k=1000))
    pol = GenerativePolicy(served, tiny_world, beam=engine.beam)
    batch = RequestBatch.of(ids, logs.journeys, logs.ads, logs.users, m=1000)
    b = pol.prep.at_batch(batch, pol.model.cfg.max_len, pol.model.cfg.thought_tokens)
    items, logp = pol.model.generate(b, pol.prep.trie, pol.beam, pol.prep.trie_eligible(batch))
    for r, rec in enumerate(recs):
        want = [int(i) for i in items[r] if i >= 0]
        assert [a.item_id for a in rec.ads] == want
        got = torch.tensor([a.logp for a in rec.ads])
        torch.testing.assert_close(got, logp[r, : len(want)].float(), rtol=1e-4, atol=1e-4)


def test_every_served_ad_is_eligible_and_paused_ads_are_not_served(
    served: Path, logs: LogData
) -> None:
    ids, day = _test_day(logs, 16)
    engine = Engine.from_run(served, day=day)
    reqs = logged_requests(logs, ids, k=5)
    recs = engine.recommend(reqs)
    users = logs.journeys.user[logs.journeys.positions(ids)]
    ok = eligible_mask(logs.ads, logs.users, users, np.full(len(ids), day))
    for r, rec in enumerate(recs):
        assert 1 <= len(rec.ads) <= 5
        assert all(ok[r, logs.ads.index_of(np.array([a.item_id]))[0]] for a in rec.ads)
        scores = [a.score for a in rec.ads]
        assert scores == sorted(scores, reverse=True)
        if engine.model.hte is not None:
            a = rec.ads[0]
            assert a.pctr is not None and a.pcvr is not None and a.ecpm is not None
            assert a.ecpm == pytest.approx(1000 * a.bid * a.pctr * a.pcvr)
    top = recs[0].ads[0].item_id
    engine.catalogue.pause(top)
    again = engine.recommend(reqs)
    assert all(top not in [a.item_id for a in rec.ads] for rec in again)


def test_bad_requests_name_the_field(served: Path, logs: LogData) -> None:
    ids, day = _test_day(logs, 1)
    engine = Engine.from_run(served, day=day)
    req = logged_requests(logs, ids)[0]
    req.user.region = 99
    with pytest.raises(GprInputError, match="region"):
        engine.recommend([req])
    req = logged_requests(logs, ids)[0]
    req.journey.append(Event("O", req.timestamp + 10, item_id=1))
    with pytest.raises(GprInputError, match="timestamp"):
        engine.recommend([req])
    req = logged_requests(logs, ids)[0]
    req.journey.append(Event("I", req.timestamp, item_id=-5))
    with pytest.raises(GprInputError, match="item_id"):
        engine.recommend([req])
    # an item the run never saw is kept as a token without an item
    req = logged_requests(logs, ids)[0]
    req.journey.append(Event("O", req.timestamp, item_id=10**9))
    assert engine.recommend([req])[0].ads


def test_the_static_snapshot_path_serves_what_the_live_path_serves(
    served: Path, logs: LogData
) -> None:
    """The GPU path (a Trie snapshot plus masks; here on CPU) = the live catalogue, and the
    snapshot is remade after an update."""
    ids, day = _test_day(logs, 12)
    live = Engine.from_run(served, day=day, static=False)
    snap = Engine.from_run(served, day=day, static=True)
    reqs = logged_requests(logs, ids, k=1000)
    a, b = live.recommend(reqs), snap.recommend(reqs)
    for x, y in zip(a, b, strict=True):
        assert [ad.item_id for ad in x.ads] == [ad.item_id for ad in y.ads]
        torch.testing.assert_close(
            torch.tensor([ad.score for ad in x.ads]), torch.tensor([ad.score for ad in y.ads])
        )
    top = b[0].ads[0].item_id
    snap.catalogue.pause(top)
    assert all(top not in [ad.item_id for ad in r.ads] for r in snap.recommend(reqs))

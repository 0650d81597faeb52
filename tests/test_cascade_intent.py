"""The cascade's session-intent feature: pooling on hand examples, the pretext fit on tiny."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gpr.cascade.config import cascade_config
from gpr.cascade.features import N_MATCH, Catalog, request_features, session_mean
from gpr.cascade.intent import SessionIntent, _shares, train_intent
from gpr.cascade.load import load_cascade
from gpr.market.journeys import LogData


def test_session_mean_and_topic_shares_by_hand() -> None:
    content = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])  # row 0 = padding
    r = {
        "o_item": torch.tensor([[1, 2, 3], [0, 0, 3], [1, 2, 0]]),
        # item 1 of request 0 is from an older session; request 2 has no session views
        "o_sess": torch.tensor([[False, True, True], [True, True, True], [False] * 3]),
    }
    x, n = session_mean(content, r)
    torch.testing.assert_close(x, torch.tensor([[2.0, 3.0], [4.0, 4.0], [0.0, 0.0]]))
    assert n[:, 0].tolist() == [2, 1, 0]
    topics = torch.tensor([[1, 1, 2], [3, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    shares = _shares(topics, mask, 4)
    torch.testing.assert_close(shares, torch.tensor([[0, 2 / 3, 1 / 3, 0], [0, 0, 0, 1.0]]))


def test_untrained_intent_scores_zero_and_training_fits_views(tiny_world: Path) -> None:
    logs = LogData.load(tiny_world)
    cat = Catalog.from_logs(logs)
    cfg = cascade_config("tiny", intent_epochs=3, intent_negatives=64)
    model = SessionIntent(
        cat.content.shape[1],
        len(cat.content),
        int(cat.subtopic.max()) + 1,
        len(logs.users.age_band),
        16,
    )
    j = logs.journeys
    req = request_features(j, logs.users, cat, j.requests("test")[:50], 20, 1, 30).tensors()
    content, subtopic = torch.from_numpy(cat.content), torch.from_numpy(cat.subtopic)
    assert torch.count_nonzero(model.query(content, subtopic, req)) == 0
    meta = train_intent(model, logs, cat, cfg, np.random.default_rng(0))
    assert meta["n_views"] > 0 and meta["last_loss"] < meta["first_loss"]
    assert not any(p.requires_grad for p in model.parameters())  # frozen for the ranker
    q = model.query(content, subtopic, req)
    assert q.shape == (50, cat.content.shape[1]) and torch.isfinite(q).all()
    assert q.abs().sum() > 0


def test_cascade_with_intent_trains_and_serves(tiny_world: Path, tmp_path: Path) -> None:
    from gpr.cascade.train import evaluate_ranking, train_cascade

    run = tmp_path / "run"
    cfg = cascade_config(
        "tiny",
        epochs=1,
        wide_epochs=1,
        retrieval_epochs=1,
        intent=True,
        intent_epochs=1,
        session_topics=False,
    )
    meta = train_cascade(tiny_world, cfg, 0, run)
    assert meta["metrics"]["intent"]["n_views"] > 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["stage"] == "intent"
    c = load_cascade(run, LogData.load(tiny_world))
    assert c.ranking.intent is not None and c.ranking.wide_ctr.in_features == N_MATCH + 1
    assert 0.0 <= evaluate_ranking(run, tiny_world, "test")["auc_ctr"] <= 1.0
    # the default cascade has no intent part (runs from before the option load unchanged)
    assert cascade_config("tiny").intent is False

"""The session-topic model (cascade/topics.py): EM on a planted world, a leak-free prior, the
features by hand, and the cascade wired with it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from gpr.cascade.config import cascade_config
from gpr.cascade.features import N_MATCH, Catalog, current_session
from gpr.cascade.load import load_cascade
from gpr.cascade.topics import (
    N_TOPIC,
    SESSION_SECONDS,
    WINDOW,
    SessionTopics,
    _posterior,
    topic_features,
)
from gpr.cascade.train import impressions, predict, train_cascade
from gpr.market.journeys import SPLIT_CODE, TYPE_CODE, LogData


def _planted(n_users: int = 60, n_sess: int = 12, views: int = 6, seed: int = 0) -> Any:
    """Organic journeys over 3 subtopics (item row r + 1 has subtopic r % 3): each user has one
    topic t, and each view lands in t with probability 0.6, else in another subtopic."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list[int]] = {k: [] for k in ("user", "ts", "item", "split", "ttype")}
    for u in range(n_users):
        t = u % 3
        for k in range(n_sess):
            start = k * 10 * SESSION_SECONDS
            for v in range(views):
                s = t if rng.random() < 0.6 else (t + 1 + rng.integers(2)) % 3
                cols["user"].append(u)
                cols["ts"].append(start + 60 * v)
                cols["item"].append(int(s + 3 * rng.integers(10)))  # item id; row = id + 1
                cols["split"].append(SPLIT_CODE["train"])
                cols["ttype"].append(TYPE_CODE["O"])
    jour = SimpleNamespace(**{k: np.asarray(v, np.int64) for k, v in cols.items()})
    subtopic = np.r_[0, np.arange(30) % 3 + 1]  # by row, + 1
    content = np.zeros((31, 3), np.float32)
    content[np.arange(1, 31), np.arange(30) % 3] = 1.0
    return jour, subtopic, content


def test_em_recovers_planted_topics_and_the_prior_concentrates() -> None:
    jour, subtopic, content = _planted()
    topics = SessionTopics.fit(jour, subtopic, content, np.arange(1, 31), iters=30)  # type: ignore[arg-type]
    t = np.exp(topics.log_t)
    np.testing.assert_allclose(np.diag(t), 0.6, atol=0.05)
    np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-5)
    # a request after all of a user's sessions: the prior puts most mass on that user's topic
    last = np.r_[np.nonzero(np.diff(jour.user))[0], len(jour.user) - 1]
    prior = topics.prior(jour, subtopic, last)  # type: ignore[arg-type]
    # `last` rows are views themselves (their own session is inside the window), so the prior
    # is the mean posterior of the n_sess - 1 earlier sessions (6 views each: ~0.6 on the topic)
    assert (prior.argmax(1) == jour.user[last] % 3).all()
    assert prior.max(1).mean() > 0.5


@pytest.mark.parametrize(
    ("half_life", "strength", "session_gap"), [(0.0, 1.0, 0), (0.5, 0.1, 0), (0.5, 0.1, 300)]
)
def test_prior_counts_only_sessions_that_ended_before_the_current_one(
    tiny_world: Path, half_life: float, strength: float, session_gap: int
) -> None:
    logs = LogData.load(tiny_world)
    cfg = cascade_config(
        "tiny",
        topic_half_life_days=half_life,
        topic_prior_strength=strength,
        session_gap_seconds=session_gap,
    )
    # the legacy rule: sessions split at SESSION_SECONDS, the prior skips the last WINDOW seconds
    split, window = (session_gap, session_gap + 1) if session_gap else (SESSION_SECONDS, WINDOW)
    cat = Catalog.from_logs(logs, cfg)
    topics = cat.topics
    assert topics is not None and topics.prior_strength == strength
    j = logs.journeys
    pos = j.requests("test")[:60]
    got = topics.prior(j, cat.subtopic, pos)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    organic = np.nonzero(j.ttype == TYPE_CODE["O"])[0]

    def decay(seconds: float) -> float:
        return 2.0 ** (-seconds / (86400 * half_life)) if half_life > 0 else 1.0

    def shares(evidence: np.ndarray) -> np.ndarray:
        return (evidence + strength * topics.share) / (evidence.sum() + strength)

    n_decayed = 0
    for b, p in enumerate(pos):  # brute force: the user's sessions, chained by `split`
        rows = organic[j.user[organic] == j.user[p]]
        sessions: list[list[int]] = []
        for r in rows:
            if not sessions or j.ts[r] - j.ts[sessions[-1][-1]] > split:
                sessions.append([])
            sessions[-1].append(r)
        history, end = np.zeros(topics.n), None
        seen, seen_end = np.zeros(topics.n), None
        for sess in sessions:  # each session's posterior under the (decayed) earlier ones
            if end is not None:
                history = history * decay(j.ts[sess[-1]] - end)
            end = j.ts[sess[-1]]
            c = np.zeros((1, topics.n), np.float32)
            np.add.at(c[0], cat.subtopic[j.item[sess] + 1] - 1, 1.0)
            history = history + _posterior(c @ topics.log_t.T, np.log(shares(history) + 1e-12))[0]
            if end <= j.ts[p] - window:
                seen, seen_end = history, end
        if seen_end is not None:
            seen = seen * decay(j.ts[p] - seen_end)
            n_decayed += int(decay(j.ts[p] - seen_end) < 0.99)
        np.testing.assert_allclose(got[b], shares(seen), rtol=1e-4, atol=1e-6)
    assert (n_decayed > 0) == (half_life > 0)  # the forgetting was exercised


def test_topic_features_by_hand() -> None:
    log_t = torch.log(torch.tensor([[0.8, 0.2], [0.3, 0.7]]))
    aff = torch.tensor([[1.0, -1.0], [-0.5, 0.5]])
    centroid = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    log_prior = torch.log(torch.tensor([[0.5, 0.5]]))
    view_sub = torch.tensor([[0, 1]])
    views = torch.tensor([[True, False]])  # only the first view is in the current session
    ad_sub = torch.tensor([[1]])
    ad_x = torch.tensor([[[3.0, 1.0]]])
    f = topic_features(log_prior, view_sub, views, ad_sub, ad_x, log_t, aff, centroid)[0, 0]
    post = torch.tensor([0.4, 0.15]) / 0.55  # 0.5 * 0.8, 0.5 * 0.3
    want = [
        0.5,
        0.5 * -1.0 + 0.5 * 0.5,
        0.5 * 3.0 + 0.5 * 2.0,
        float(post[1]),
        float(post[0] * -1.0 + post[1] * 0.5),
        float(post[0] * 3.0 + post[1] * 2.0),
    ]
    assert f.shape == (N_TOPIC,)
    np.testing.assert_allclose(f.numpy(), want, rtol=1e-5)
    assert math.isclose(float(post.sum()), 1.0, rel_tol=1e-6)


def test_cascade_with_session_topics_trains_and_reloads(tiny_world: Path, tmp_path: Path) -> None:
    cfg = cascade_config(
        "tiny", epochs=1, wide_epochs=2, retrieval_epochs=1, session_topics=True, deep=False
    )
    out = tmp_path / "run"
    train_cascade(tiny_world, cfg, 0, out)
    logs = LogData.load(tiny_world)
    c = load_cascade(out, logs)
    assert c.cat.topics is not None
    assert c.ranking.wide_ctr.in_features == N_MATCH + N_TOPIC
    imp = impressions(logs, c.cat, "test", c.cfg)
    p1, _ = predict(c.ranking, imp)
    p2, _ = predict(load_cascade(out, logs).ranking, imp)
    np.testing.assert_array_equal(p1, p2)  # the EM refit at load is deterministic
    w = c.ranking.wide_ctr.weight.detach()[0, N_MATCH:]
    assert torch.isfinite(w).all() and w.abs().sum() > 0  # the topic features were learnt on


def _saved_before(out: Path, *fields: str) -> None:
    """Rewrite run `out`'s run.json as written before these config fields existed."""
    meta = json.loads((out / "run.json").read_text())
    for name in fields:
        del meta["config"][name]
    (out / "run.json").write_text(json.dumps(meta))


def test_runs_saved_before_session_topics_load_with_them_off(
    tiny_world: Path, tmp_path: Path
) -> None:
    cfg = cascade_config("tiny", epochs=1, wide_epochs=1, retrieval_epochs=1, session_topics=False)
    out = tmp_path / "run"
    train_cascade(tiny_world, cfg, 0, out)
    _saved_before(out, "session_topics")
    c = load_cascade(out, LogData.load(tiny_world))
    assert c.cat.topics is None and c.ranking.wide_ctr.in_features == N_MATCH


def test_runs_saved_before_the_prior_options_load_with_the_old_prior(
    tiny_world: Path, tmp_path: Path
) -> None:
    cfg = cascade_config("tiny", epochs=1, wide_epochs=1, retrieval_epochs=1, deep=False)
    out = tmp_path / "run"
    train_cascade(tiny_world, cfg, 0, out)
    now = load_cascade(out, LogData.load(tiny_world)).cat
    assert now.session_gap == 300 and now.topics.half_life_days == 2.0  # type: ignore[union-attr]
    _saved_before(out, "topic_prior_strength", "topic_half_life_days", "session_gap_seconds")
    cat = load_cascade(out, LogData.load(tiny_world)).cat
    topics = cat.topics
    assert topics is not None and (topics.prior_strength, topics.half_life_days) == (1.0, 0.0)
    assert cat.session_gap == 0 and (topics.session_gap, topics.window) == (SESSION_SECONDS, WINDOW)


def test_current_session_is_the_chain_of_views_after_the_last_long_pause() -> None:
    row_ts = np.array([0, 100, 130, 1000, 1030])
    idx = np.array([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [-1, -1, -1, 3, 4]])
    now = np.array([1031, 5000, 1031])
    got = current_session(row_ts, idx, now, 300)
    # pauses 100, 30, 870, 30, then 1 s (or 3,970 s) to the request: only 870 s > 300 s splits
    want = [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    np.testing.assert_array_equal(got, np.asarray(want, bool))
    # the legacy rule: every view younger than WINDOW, whatever pause lies between
    legacy = current_session(row_ts, idx, now, 0)
    np.testing.assert_array_equal(legacy[0], [True] * 5)
    assert WINDOW > 1031 and not legacy[1].any() and legacy[2].tolist() == [0, 0, 0, 1, 1]

"""Journey tokens: targets, prediction positions, windows and label hygiene on hand-made streams."""

from __future__ import annotations

import numpy as np

from gpr.core.metrics import ndcg_at, recall_at, retrieval_metrics, target_ranks
from gpr.model.journey import (
    E,
    I,
    O,
    SidTable,
    TokenStreams,
    U,
    collate,
    make_windows,
    next_targets,
    positions_for_split,
    prediction_mask,
    tail_windows,
)


def _journeys() -> TokenStreams:
    # user 0: U O E I(10) O E I(11) E I(12) ; user 1: U O E I(13) E(no ad) O E I(14)
    t0 = [U, O, E, I, O, E, I, E, I]
    t1 = [U, O, E, I, E, O, E, I]
    ttype = np.array(t0 + t1)
    item = np.array([-1, 1, -1, 10, 2, -1, 11, -1, 12] + [-1, 3, -1, 13, -1, 4, -1, 14])
    req = np.array([-1, -1, 0, 0, -1, 1, 1, 2, 2] + [-1, -1, 3, 3, 4, -1, 5, 5])
    split = np.array([0, 0, 0, 0, 0, 0, 0, 2, 2] + [0, 0, 0, 0, 1, 1, 1, 1])
    n = len(ttype)
    return TokenStreams(
        indptr=np.array([0, 9, n]),
        users=np.array([0, 1]),
        ttype=ttype,
        item=item,
        field=np.zeros((n, 4), dtype=np.int64),
        action=np.where(ttype == I, 1, 0),
        day=np.zeros(n, dtype=np.int64),
        split=split,
        request=req,
        n_user_tokens=1,
        ts=np.where(ttype == U, 0, np.arange(n) * 10),
    )


def test_next_targets_and_prediction_positions() -> None:
    j = _journeys()
    tg = next_targets(j, 2)
    assert tg[2].tolist() == [10, 11] and tg[7].tolist() == [12, -1]
    assert tg[8].tolist() == [-1, -1]  # nothing after the user's last I, never the next user's
    pm = prediction_mask(j, tg)
    # E tokens followed by their own I; E of request 4 (no ad shown) is not a prediction
    assert np.nonzero(pm)[0].tolist() == [2, 5, 7, 11, 15]
    assert positions_for_split(j, pm, "test").tolist() == [7]
    assert positions_for_split(j, pm, "valid").tolist() == [15]


def test_windows_cover_each_position_once() -> None:
    j = _journeys()
    pm = prediction_mask(j, next_targets(j, 1))
    pos = np.nonzero(pm)[0]
    for max_len in (3, 4, 5, 12):
        wins = make_windows(j, max_len, pos)
        owned = []
        for w in wins:
            assert w.end - w.start <= max_len - 1
            owned += [p for p in pos if w.own_from <= p < w.end]
        assert sorted(owned) == pos.tolist()
    tw = tail_windows(j, np.array([7, 15]), 4)
    assert [(w.start, w.end) for w in tw] == [(5, 8), (13, 16)]


def test_collate_drops_labels_outside_allowed_splits() -> None:
    j = _journeys()
    tg = next_targets(j, 2)
    pm = prediction_mask(j, tg)
    codes = np.arange(15 * 2).reshape(15, 2) % 5
    sids = SidTable(codes, np.zeros(15, dtype=np.int64), 5, np.ones(15, dtype=bool))
    wins = make_windows(j, 12, np.nonzero(pm)[0])
    b = collate(j, wins, sids, tg, pm, (0,), 12)
    by_pos = {int(p): b.targets[i].tolist() for i, p in enumerate(b.position)}
    assert by_pos[5] == [11, -1]  # head 2's label (item 12) is a test-day token: dropped
    assert by_pos[7] == [-1, -1]
    assert b.target_codes[b.position == 2][0, 0].tolist() == [*codes[10].tolist(), 0]
    # the U token stays in front of every window
    assert (b.ttype[:, 0] == U).all()
    # timestamps travel with their tokens (the U token's is 0)
    for r, w in enumerate(wins):
        n = w.end - w.start
        assert b.ts[r, 0] == 0 and b.ts[r, 1 : 1 + n].tolist() == j.ts[w.start : w.end].tolist()


def test_retrieval_metrics_known_answers() -> None:
    ranked = np.array([[5, 3, 9], [1, 2, 3], [7, -1, -1]])
    target = np.array([3, 4, 7])
    ranks = target_ranks(ranked, target)
    assert ranks.tolist() == [1, -1, 0]
    assert recall_at(ranks, 1) == 1 / 3 and recall_at(ranks, 2) == 2 / 3
    assert np.isclose(ndcg_at(ranks, 5), (1 / np.log2(3) + 1.0) / 3)
    m = retrieval_metrics(ranked, target, valid_items=np.array([1, 2, 3, 5, 7]))
    assert np.isclose(m["invalid_rate"], 1 / 7)  # item 9 does not exist


def test_window_thoughts_use_only_the_past() -> None:
    from gpr.model.thoughts import window_thoughts

    j = _journeys()
    topic = np.full(15, -1)
    topic[[1, 2, 10, 11, 12]] = [0, 1, 2, 2, 0]  # organic 1, 2 and ads 10, 11, 12
    wins = make_windows(j, 4, np.array([7]))  # user 0's window that owns position 7
    w = [x for x in wins if x.own_from <= 7 < x.end][0]
    got = window_thoughts(j, [w], topic, 3, clicks_only=True)[0]
    before = set(int(topic[i]) for i in j.item[1 : w.start] if i >= 0 and topic[i] >= 0)
    assert set(got[got >= 0].tolist()) == before
    # at the very start of a journey there is nothing to think about yet
    first = window_thoughts(j, [make_windows(j, 12, np.array([2]))[0]], topic, 2, True)
    assert (first == -1).all()

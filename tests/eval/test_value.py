"""`gpr eval --value`: nDCG and OPR on hand examples, and the value evaluation of a tiny run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gpr.core.config import load_config
from gpr.core.errors import GprInputError
from gpr.eval.value import ndcg_value, opr, value_eval
from gpr.train import mtp

KEYS = ("ndcg_value", "opr", "avg_final_value", "max_final_value")


@pytest.fixture(scope="module")
def run(tiny_world: Path, tiny_sids: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny MTP run, trained once for this module."""
    out = tmp_path_factory.mktemp("value") / "mtp"
    mtp.train(tiny_world, tiny_sids, load_config("tiny"), out, "gpr", progress=False)
    return out


# --- nDCG --------------------------------------------------------------------------------------
def test_ndcg_value_hand_rows() -> None:
    scores = np.array(
        [
            [3.0, 2.0, 1.0],  # the ideal order
            [1.0, 2.0, 3.0],  # reversed
            [5.0, 1.0, 0.5],  # entry 0 is invalid: its score and gain are ignored
            [1.0, 2.0, 3.0],  # all gains 0: no order matters (NaN)
            [1.0, 2.0, 3.0],  # nothing valid (NaN)
        ]
    )
    gains = np.array(
        [[1.0, 0.5, 0.0], [1.0, 0.5, 0.0], [100.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    )
    valid = np.ones((5, 3), dtype=bool)
    valid[2, 0] = False
    valid[4] = False
    got = ndcg_value(scores, gains, valid)
    # reversed: gains in order 0, 0.5, 1 -> DCG 0.5 / log2(3) + 1 / log2(4); IDCG 1 + 0.5 / log2(3)
    rev = (0.5 / math.log2(3) + 1 / 2) / (1 + 0.5 / math.log2(3))
    # invalid entry dropped: order (0, 1) of gains (0, 1) -> 1 / log2(3) over the ideal 1
    np.testing.assert_allclose(got, [1.0, rev, 1 / math.log2(3), np.nan, np.nan], rtol=1e-12)


def test_ndcg_value_score_ties_keep_the_input_order() -> None:
    """Equal scores: the stable sort keeps the candidates' order (the sampling order)."""
    got = ndcg_value(np.zeros((1, 2)), np.array([[0.0, 1.0]]), np.ones((1, 2), dtype=bool))
    np.testing.assert_allclose(got, [1 / math.log2(3)], rtol=1e-12)


# --- OPR ---------------------------------------------------------------------------------------
def test_opr_hand_rows() -> None:
    scores = np.array(
        [
            [3.0, 2.0, 1.0],  # ordered like the values
            [1.0, 2.0, 3.0],  # reversed
            [1.0, 1.0, 0.0],  # a score tie on the pair (0, 1)
            [3.0, 0.0, 1.0],  # a value tie on (0, 1): not a pair
            [1.0, 0.0, 2.0],  # entry 1 is invalid
            [1.0, 2.0, 3.0],  # all values equal: no pair
            [1.0, 2.0, 3.0],  # one valid entry: no pair
        ]
    )
    values = np.array(
        [
            [30.0, 20.0, 10.0],
            [30.0, 20.0, 10.0],
            [3.0, 2.0, 1.0],
            [2.0, 2.0, 1.0],
            [1.0, 5.0, 2.0],
            [4.0, 4.0, 4.0],
            [1.0, 2.0, 3.0],
        ]
    )
    valid = np.ones((7, 3), dtype=bool)
    valid[4, 1] = False
    valid[6, 1:] = False
    got = opr(scores, values, valid)
    # row 2: pairs (0>1) tie 0.5, (0>2) 1, (1>2) 1 -> 2.5 / 3
    # row 3: pairs (0>2) agree, (1>2) disagree -> 1 / 2
    # row 4: the one valid pair (2>0) agrees -> 1 (with entry 1 it would be 1 / 3)
    expected = [1.0, 0.0, 2.5 / 3, 0.5, 1.0, np.nan, np.nan]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# --- value_eval on the tiny run ------------------------------------------------------------------
def test_value_eval_on_the_tiny_run(run: Path) -> None:
    res = value_eval(run, "test", k=8, limit=60, seed=3)
    assert set(KEYS) <= res.keys()
    assert (res["k"], res["split"], res["run"], res["stage"]) == (8, "test", str(run), "mtp")
    assert 0 < res["n_requests"] <= 60
    for key in KEYS:
        assert 0.0 <= res[key] <= 1.0, key
    assert res["max_final_value"] >= res["avg_final_value"]
    assert value_eval(run, "test", k=8, limit=60, seed=3) == res  # deterministic


def test_value_eval_unknown_split(run: Path) -> None:
    with pytest.raises(GprInputError, match="split"):
        value_eval(run, "bogus")

"""VAFT's value weights (spec §4.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpr.core.errors import GprInputError
from gpr.train.vaft import value_weights

F64 = torch.float64


# --- VAFT --------------------------------------------------------------------------------------
# Six targets over two days (3 and 1, interleaved); day 3's mean eCPM is 2, day 1's is 4.
ACTION = np.array([0, 0, 1, 2, 2, 0])
ECPM = np.array([2.0, 0.2, 2.0, 10.0, 2.0, 1.8])
PCTR = np.array([0.25, 0.2, 0.25, 0.1, 0.25, 0.3])
PCVR = np.array([0.5, 0.5, 0.5, 0.2, 0.5, 0.5])
DAY = np.array([3, 1, 3, 1, 3, 1])


def test_vaft_paper_weights_normalise_per_day_and_clip() -> None:
    """paper: eCPM, eCPM/pCTR, eCPM/(pCTR pCVR) over the day's mean eCPM, clipped to [0.1, 10]."""
    w = value_weights(ACTION, PCTR, PCVR, ECPM, DAY, "paper")
    expected = [
        2.0 / 2,  # impression, day 3
        0.1,  # impression, day 1: 0.2 / 4 = 0.05, clipped up
        (2.0 / 0.25) / 2,  # click, day 3: 4
        10.0,  # conversion, day 1: 10 / 0.02 / 4 = 125, clipped down
        (2.0 / 0.125) / 2,  # conversion, day 3: 8
        1.8 / 4,  # impression, day 1: 0.45
    ]
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    # a custom clip range
    w = value_weights(ACTION, PCTR, PCVR, ECPM, DAY, "paper", clip=(0.5, 5.0))
    np.testing.assert_allclose(w, [1.0, 0.5, 4.0, 5.0, 5.0, 0.5], rtol=1e-12)


def test_vaft_simple_weights() -> None:
    """simple: (1 | 2 | 4) x eCPM over the day's mean eCPM, clipped."""
    w = value_weights(ACTION, PCTR, PCVR, ECPM, DAY, "simple")
    # 2/2, 0.2/4 -> 0.1, 2*2/2, 4*10/4, 4*2/2, 1.8/4
    np.testing.assert_allclose(w, [1.0, 0.1, 2.0, 10.0, 4.0, 0.45], rtol=1e-12)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("paper", [1.0, 1 / 0.3, 1 / (0.3 * 0.1)]), ("simple", [1.0, 2.0, 4.0])],
)
def test_vaft_conversion_over_click_over_impression(mode: str, expected: list[float]) -> None:
    """Equal eCPM on one day: the weights order conversion > click > impression."""
    ones = np.ones(3)
    w = value_weights(
        np.array([0, 1, 2]), 0.3 * ones, 0.1 * ones, ones, np.zeros(3), mode, (0, 1e9)
    )
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    assert w[2] > w[1] > w[0]


def test_vaft_unknown_mode_raises() -> None:
    with pytest.raises(GprInputError, match="unknown VAFT weighting") as e:
        value_weights(ACTION, PCTR, PCVR, ECPM, DAY, "fancy")
    assert e.value.field == "vaft_weights"

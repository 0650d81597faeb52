"""The auction stage: eCPM = bid x pCTR x pCVR x 1000 (oCPA), rank, generalised second price.

The winner at each rank position pays, per conversion, the bid that would tie the next ad's eCPM
(eCPM_next / (pCTR x pCVR x 1000)), never more than its own bid; the last one pays a reserve of
`reserve_share` x its bid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AuctionResult:
    order: np.ndarray  # (B, K) candidate positions, best eCPM first (invalid ones last)
    ecpm: np.ndarray  # (B, K) eCPM in that order, -inf for invalid
    price: np.ndarray  # (B, K) oCPA price per conversion at each rank position, NaN for invalid


def run_auction(
    bid: np.ndarray,
    pctr: np.ndarray,
    pcvr: np.ndarray,
    valid: np.ndarray,
    reserve_share: float = 0.1,
) -> AuctionResult:
    """All (B, K): rank candidates by eCPM and set second prices."""
    ecpm = np.where(valid, bid * pctr * pcvr * 1000.0, -np.inf)
    order = np.argsort(-ecpm, axis=1, kind="stable")
    e = np.take_along_axis(ecpm, order, axis=1)
    b = np.take_along_axis(bid, order, axis=1)
    p = np.take_along_axis(pctr * pcvr, order, axis=1)
    nxt = np.concatenate([e[:, 1:], np.full((len(e), 1), -np.inf)], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        second = np.where(np.isfinite(nxt), nxt / np.maximum(p * 1000.0, 1e-30), reserve_share * b)
    price = np.where(np.isfinite(e), np.minimum(second, b), np.nan)
    return AuctionResult(order, e, price)

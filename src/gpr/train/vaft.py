"""VAFT — value-aware fine-tuning (spec §4.2, Eq. 4): MTP with per-target business weights.

Each target (a logged I token) gets ω^V from its action and its eCPM under the simulator:

- `paper`: impression ∝ eCPM, click ∝ eCPM / pCTR, conversion ∝ eCPM / (pCTR · pCVR) — so a
  click counts as if the ad had been certain to be clicked, a conversion as if certain to
  convert — divided by the mean eCPM of the same day's impressions, clipped to `vaft_clip`.
- `simple` (the ablation baseline): (1 | 2 | 4) × eCPM / the day's mean eCPM, clipped likewise.

    gpr train --stage vaft --init RUN --simulator CASCADE_RUN --data DIR --out RUN_VAFT
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gpr.cascade.simulator import Simulator
from gpr.core.config import GprConfig
from gpr.core.errors import GprInputError
from gpr.core.io import read_json
from gpr.model.journey import SPLIT_CODE, I, TokenStreams
from gpr.model.prepare import Prepared
from gpr.train.mtp import train

ACTION_FACTOR = np.array([1.0, 2.0, 4.0])  # the simple variant: impression, click, conversion


def value_weights(
    action: np.ndarray,
    pctr: np.ndarray,
    pcvr: np.ndarray,
    ecpm: np.ndarray,
    day: np.ndarray,
    mode: str = "paper",
    clip: tuple[float, float] = (0.1, 10.0),
) -> np.ndarray:
    """ω^V per target. action 0/1/2, simulator pCTR / pCVR, eCPM (any unit), day per target."""
    action = np.asarray(action, dtype=np.int64)
    if mode == "paper":
        ctr, cvr = np.maximum(pctr, 1e-6), np.maximum(pcvr, 1e-6)
        raw = np.select([action == 2, action == 1], [ecpm / (ctr * cvr), ecpm / ctr], ecpm)
    elif mode == "simple":
        raw = ACTION_FACTOR[np.clip(action, 0, 2)] * ecpm
    else:
        raise GprInputError(
            f"unknown VAFT weighting '{mode}' (paper | simple)", field="vaft_weights"
        )
    days, inv = np.unique(day, return_inverse=True)
    mean = np.array([max(float(ecpm[inv == k].mean()), 1e-12) for k in range(len(days))])
    return np.clip(raw / mean[inv], *clip)


def token_weights(
    j: TokenStreams, sim: Simulator, mode: str = "paper", clip: tuple[float, float] = (0.1, 10.0)
) -> np.ndarray:
    """(T,) ω^V of every train-split I token of the model journeys (1 elsewhere)."""
    rows = np.nonzero((j.ttype == I) & (j.split == SPLIT_CODE["train"]) & (j.request >= 0))[0]
    out = np.ones(len(j.ttype))
    if not len(rows):
        return out
    s = sim.score(j.request[rows], j.item[rows][:, None])
    w = value_weights(
        j.action[rows], s.pctr[:, 0], s.pcvr[:, 0], s.value[:, 0], j.day[rows], mode, clip
    )
    out[rows] = w
    return out


def train_vaft(
    init: str | Path, simulator: str | Path, cfg: GprConfig, out: str | Path, progress: bool = True
) -> dict[str, Any]:
    """MTP training from `init` on its data and SIDs, each target weighted by ω^V."""
    info = read_json(Path(init) / "run.json")
    sim = Simulator(simulator, info["data"])
    ac = cfg.align

    def weights(prep: Prepared) -> np.ndarray:
        return token_weights(prep.journeys, sim, ac.vaft_weights, ac.vaft_clip)

    meta = {"stage": "vaft", "init": str(init), "simulator": str(simulator)}
    return train(
        info["data"],
        info["sids"],
        cfg,
        out,
        progress=progress,
        init=init,
        token_weight=weights,
        meta=meta,
    )

"""The policy interface every recommender implements: a batch of requests in, ranked ads out.

A policy sees a batch of requests (the user's journey up to each request through `journeys`, the
environment, and the (B, A) mask of eligible ads) and returns, per request, up to M ad item ids in
its preferred order with its own estimated values (-1 / NaN padded). The replay
(`gpr.eval.simulate`) shows the first ranked ad whose budget is not exhausted and scores it with
the hidden truth. The policies themselves live in `gpr.policy`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from gpr.market.ads import Ads, Users, eligible_mask
from gpr.market.journeys import Journeys

DEFAULT_M = 16


ENV_FIELDS = ("scene", "slot", "device", "hour")


@dataclass
class RequestBatch:
    """B requests: the replay's (one day, in time order), a training draw, or ARR's synthetic
    requests (a real request's user and history with another environment, `with_env`)."""

    request_ids: np.ndarray  # (B,) int64
    user_ids: np.ndarray
    days: np.ndarray
    timestamps: np.ndarray
    scene: np.ndarray
    slot: np.ndarray
    device: np.ndarray
    hour: np.ndarray
    eligible: np.ndarray  # (B, A) bool over ad indices (targeting, active, budget left)
    pos: np.ndarray  # (B,) E-row positions in `journeys`: history = rows strictly before
    journeys: Journeys
    ads: Ads
    users: Users
    m: int = DEFAULT_M  # how many ranked ads the replay wants per request

    def __len__(self) -> int:
        return len(self.request_ids)

    @property
    def env(self) -> np.ndarray:
        """(B, 4) scene, slot, device, hour."""
        return np.stack([getattr(self, f) for f in ENV_FIELDS], 1)

    def with_env(self, env: np.ndarray) -> RequestBatch:
        """The same requests in environment `env` (B, 4) (-1 keeps a field)."""
        new: dict[str, Any] = {
            f: np.where(env[:, k] >= 0, env[:, k], getattr(self, f))
            for k, f in enumerate(ENV_FIELDS)
        }
        return replace(self, **new)

    def take(self, idx: np.ndarray) -> RequestBatch:
        """The requests at `idx` (indices or a (B,) bool mask)."""
        cut: dict[str, Any] = {f: getattr(self, f)[idx] for f in PER_REQUEST}
        return replace(self, **cut)

    @staticmethod
    def concat(parts: list[RequestBatch]) -> RequestBatch:
        """Requests of batches over the same journeys, ads and users, one after another."""
        joined: dict[str, Any] = {
            f: np.concatenate([getattr(p, f) for p in parts]) for f in PER_REQUEST
        }
        return replace(parts[0], **joined)

    @classmethod
    def of(
        cls,
        request_ids: np.ndarray,
        journeys: Journeys,
        ads: Ads,
        users: Users,
        m: int = DEFAULT_M,
        eligibility: bool = True,
    ) -> RequestBatch:
        """Logged requests by id; eligible: targeting admits the user, the ad is active that day
        (no budget: training and offline evaluation). `eligibility=False` leaves it (B, 0), for
        request pools that are only drawn from."""
        pos = journeys.positions(np.asarray(request_ids, dtype=np.int64))
        if eligibility:
            elig = eligible_mask(ads, users, journeys.user[pos], journeys.day[pos])
        else:
            elig = np.zeros((len(pos), 0), dtype=bool)
        return cls.at(pos, journeys, ads, users, elig, m)

    @classmethod
    def at(
        cls,
        pos: np.ndarray,
        journeys: Journeys,
        ads: Ads,
        users: Users,
        eligible: np.ndarray,
        m: int = DEFAULT_M,
    ) -> RequestBatch:
        """The requests whose E rows sit at `pos` in `journeys`."""
        j = journeys
        return cls(
            request_ids=j.request[pos],
            user_ids=j.user[pos],
            days=j.day[pos],
            timestamps=j.ts[pos],
            scene=j.scene[pos],
            slot=j.slot[pos],
            device=j.device[pos],
            hour=j.hour[pos],
            eligible=eligible,
            pos=pos,
            journeys=j,
            ads=ads,
            users=users,
            m=m,
        )


PER_REQUEST = (
    "request_ids",
    "user_ids",
    "days",
    "timestamps",
    *ENV_FIELDS,
    "eligible",
    "pos",
)


@dataclass
class Ranked:
    ads: np.ndarray  # (B, M) int64 ad item ids, best first, -1 padded
    values: np.ndarray  # (B, M) float: the policy's estimated value of each, NaN padded


class Policy(Protocol):
    name: str

    def rank(self, batch: RequestBatch) -> Ranked: ...


def top_m(scores: np.ndarray, eligible: np.ndarray, ads: Ads, m: int) -> Ranked:
    """Rank the eligible ads of each row by `scores` (B, A), best first, keeping m."""
    b, a = scores.shape
    s = np.where(eligible, scores, -np.inf)
    m_eff = min(m, a)
    part = (
        np.argpartition(-s, m_eff - 1, axis=1)[:, :m_eff]
        if m_eff < a
        else np.tile(np.arange(a), (b, 1))
    )
    ps = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-ps, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    val = np.take_along_axis(ps, order, axis=1)
    ok = np.isfinite(val)
    out_ads = np.full((b, m), -1, dtype=np.int64)
    out_val = np.full((b, m), np.nan)
    out_ads[:, :m_eff] = np.where(ok, ads.item_id[idx], -1)
    out_val[:, :m_eff] = np.where(ok, val, np.nan)
    return Ranked(out_ads, out_val)

"""Which ads may serve a request: targeting admits the user, the ad is active that day, budget left.

The one eligibility function of the project (`eligible_mask`), shared by the replay, every policy
and the world's calibration. The ad set is the items with kind == 'ad', in items.parquet order;
an "ad index" is a position in that set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from gpr.core.errors import GprInputError
from gpr.data.schema import ITEMS, read_table

# centres of the ads' log price and log bid in the features that read them (the world's price
# is LogNormal(3.5, 0.8); the mean log bid is 3.5 + E log U(0.1, 0.4) ≈ 2.05): the cascade's
# match features and HTE's side features
LOG_PRICE_CENTRE = 3.5
LOG_BID_CENTRE = 2.1
NEW_AD_DAYS = 3  # an ad is "new" while day - created_day <= NEW_AD_DAYS

AD_COLUMNS = (
    "target_ages",
    "target_regions",
    "target_gender",
    "created_day",
    "end_day",
    "bid",
    "price",
    "budget",
    "category",
    "subtopic",
)

# the columns an ad table holds (a run's catalogue/ads.parquet, or an items.parquet's ad rows)
AD_TABLE_COLUMNS = ("item_id", "kind", *AD_COLUMNS)


def read_ad_table(path: Path) -> pa.Table:
    """The ad columns of a Parquet file (a run's ads.parquet, or an items.parquet), checked."""
    return read_table(path, {k: ITEMS[k] for k in AD_TABLE_COLUMNS})


@dataclass(frozen=True)
class Ads:
    """Static ad attributes, indexed by ad index (0..A-1)."""

    item_id: np.ndarray  # (A,) int64
    target_ages: np.ndarray  # bitmask over age bands
    target_regions: np.ndarray  # bitmask over regions
    target_gender: np.ndarray  # -1 all, else 0 / 1
    created_day: np.ndarray
    end_day: np.ndarray  # active while created_day <= day < end_day
    bid: np.ndarray
    price: np.ndarray
    budget: np.ndarray
    category: np.ndarray
    subtopic: np.ndarray
    _lookup: np.ndarray  # item id -> ad index, -1 for non-ads

    @classmethod
    def from_items(cls, items: pa.Table) -> Ads:
        kind = items.column("kind").to_numpy(zero_copy_only=False).astype(str)
        rows = np.nonzero(kind == "ad")[0]
        if len(rows) == 0:
            raise GprInputError("no ads (kind == 'ad') in items", field="kind")
        ids = items.column("item_id").to_numpy().astype(np.int64)
        col = {k: items.column(k).to_numpy(zero_copy_only=False)[rows] for k in AD_COLUMNS}
        lookup = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
        lookup[ids[rows]] = np.arange(len(rows))
        ints = {
            k: col[k].astype(np.int64) for k in AD_COLUMNS if k not in ("bid", "price", "budget")
        }
        floats = {k: col[k].astype(np.float64) for k in ("bid", "price", "budget")}
        return cls(item_id=ids[rows], _lookup=lookup, **ints, **floats)

    @property
    def n(self) -> int:
        return len(self.item_id)

    def index_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Ad index of each item id; -1 for padding, organic items and unknown ids."""
        ids = np.asarray(item_ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < len(self._lookup))
        return np.where(ok, self._lookup[np.where(ok, ids, 0)], -1)

    def age_days(self, days: np.ndarray) -> np.ndarray:
        """(B, A) or broadcast: days since creation (new ads: <= 3)."""
        return np.asarray(days)[..., None] - self.created_day


@dataclass(frozen=True)
class Users:
    """User attributes, indexed by user id (ids need not be dense: unknown ids are -1)."""

    age_band: np.ndarray
    gender: np.ndarray
    region: np.ndarray
    activity_tier: np.ndarray

    @classmethod
    def from_table(cls, users: pa.Table) -> Users:
        ids = users.column("user_id").to_numpy().astype(np.int64)
        out = {}
        for k in ("age_band", "gender", "region", "activity_tier"):
            a = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
            a[ids] = users.column(k).to_numpy().astype(np.int64)
            out[k] = a
        return cls(**out)


def eligible_mask(
    ads: Ads,
    users: Users,
    user_ids: np.ndarray,
    days: np.ndarray,
    spend: np.ndarray | None = None,
) -> np.ndarray:
    """(B, A) bool: targeting admits the user, the ad is active on the day, budget left (spend <
    budget, when `spend` (A,) is given)."""
    u = np.asarray(user_ids, dtype=np.int64)
    d = np.asarray(days, dtype=np.int64)[:, None]
    age = users.age_band[u][:, None]
    reg = users.region[u][:, None]
    gen = users.gender[u][:, None]
    ok = (ads.created_day[None, :] <= d) & (d < ads.end_day[None, :])
    ok &= ((ads.target_ages[None, :] >> age) & 1) == 1
    ok &= ((ads.target_regions[None, :] >> reg) & 1) == 1
    ok &= (ads.target_gender[None, :] < 0) | (ads.target_gender[None, :] == gen)
    if spend is not None:
        ok &= (spend < ads.budget)[None, :]
    return ok

"""Targeting segments: a user's (age band, gender, region) as one integer, and the segments an ad's
targeting admits (its age and region bitmasks and its gender, -1 for all; spec §5, market.ads)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from gpr.core.errors import GprInputError
from gpr.market.ads import Ads, Users
from gpr.model.journey import USER_FIELD_SIZES


@dataclass(frozen=True)
class SegmentSpace:
    """Segment id = (age_band * n_genders + gender) * n_regions + region."""

    n_ages: int
    n_genders: int
    n_regions: int

    @property
    def n(self) -> int:
        return self.n_ages * self.n_genders * self.n_regions

    @classmethod
    def infer(cls, ads: Ads | None = None, users: Users | None = None) -> SegmentSpace:
        """The widths the model embeds (journey.USER_FIELD_SIZES), widened to the ads' bitmasks
        and the users' largest attribute values when they need more."""
        age, gen, reg = USER_FIELD_SIZES[:3]
        if ads is not None and ads.n:
            age = max(age, int(ads.target_ages.max()).bit_length())
            reg = max(reg, int(ads.target_regions.max()).bit_length())
            gen = max(gen, int(ads.target_gender.max()) + 1)
        if users is not None and len(users.age_band):
            age = max(age, int(users.age_band.max()) + 1)
            gen = max(gen, int(users.gender.max()) + 1)
            reg = max(reg, int(users.region.max()) + 1)
        return cls(age, gen, reg)

    def of(self, age: ArrayLike, gender: ArrayLike, region: ArrayLike) -> np.ndarray:
        """Segment id of each user from its attributes (same shapes); GprInputError when one is
        unknown (-1) or out of range."""
        a, g, r = (np.asarray(v, dtype=np.int64) for v in (age, gender, region))
        for v, size, name in ((a, self.n_ages, "age_band"), (g, self.n_genders, "gender")):
            self._check_range(v, size, name)
        self._check_range(r, self.n_regions, "region")
        return (a * self.n_genders + g) * self.n_regions + r

    def of_users(self, users: Users, user_ids: ArrayLike) -> np.ndarray:
        u = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        bad = (u < 0) | (u >= len(users.age_band))
        if bad.any():
            i = int(np.argmax(bad))
            raise GprInputError(f"unknown user {u[i]}", row=i, field="user_id")
        return self.of(users.age_band[u], users.gender[u], users.region[u])

    def split(self, seg: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment ids -> (age_band, gender, region)."""
        s = np.asarray(seg, dtype=np.int64)
        self._check_range(s, self.n, "segment")
        rest, region = np.divmod(s, self.n_regions)
        age, gender = np.divmod(rest, self.n_genders)
        return age, gender, region

    def members(self, ages: ArrayLike, gender: ArrayLike, regions: ArrayLike) -> np.ndarray:
        """(n, S) bool: the segments each ad's targeting admits (market.ads.eligible_mask)."""
        a = ((np.asarray(ages)[:, None] >> np.arange(self.n_ages)) & 1) == 1
        g = np.asarray(gender)[:, None]
        g_ok = (g < 0) | (g == np.arange(self.n_genders))
        r = ((np.asarray(regions)[:, None] >> np.arange(self.n_regions)) & 1) == 1
        m = a[:, :, None, None] & g_ok[:, None, :, None] & r[:, None, None, :]
        return m.reshape(len(a), self.n)

    def check_targeting(self, ages: ArrayLike, gender: ArrayLike, regions: ArrayLike) -> None:
        """GprInputError naming the first field whose value does not fit this space."""
        for v, width, name in (
            (ages, self.n_ages, "target_ages"),
            (regions, self.n_regions, "target_regions"),
        ):
            bad = (np.asarray(v) < 0) | (np.asarray(v) >= (1 << width))
            if bad.any():
                i = int(np.argmax(bad))
                raise GprInputError(
                    f"bitmask {int(np.asarray(v)[i])} outside {width} bits", row=i, field=name
                )
        g = np.asarray(gender)
        bad = (g < -1) | (g >= self.n_genders)
        if bad.any():
            i = int(np.argmax(bad))
            raise GprInputError(
                f"gender {int(g[i])} is neither -1 (all) nor in [0, {self.n_genders})",
                row=i,
                field="target_gender",
            )

    @staticmethod
    def _check_range(v: np.ndarray, size: int, name: str) -> None:
        bad = (v < 0) | (v >= size)
        if bad.any():
            i = int(np.argmax(bad))
            raise GprInputError(
                f"{name} {int(v.reshape(-1)[i])} outside [0, {size})", row=i, field=name
            )

"""The journey index: every user's tokens in time order, to fetch the history before a request.

Built once per dataset from events.parquet (vectorised): rows are stably sorted by user, which keeps
each user's journey in file order = time order. A request is its E row; the history of a request is
the user's tokens strictly before that row (so never its own I token, nor anything later).

    jour = Journeys.from_dataset(load_dataset(DIR))
    pos = jour.positions(request_ids)         # E-row position of each request
    idx = jour.last(pos, 20, types=("O",))    # (B, 20) row indices, oldest -> newest, -1 padded
    jour.item[idx]                            # (mask idx < 0 yourself)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from gpr.core.errors import GprInputError
from gpr.data.schema import SPLITS, TOKEN_TYPES, Dataset, load_dataset
from gpr.market.ads import Ads, Users

TYPE_CODE = {t: i for i, t in enumerate(TOKEN_TYPES)}  # U 0, O 1, E 2, I 3
SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}  # train 0, valid 1, test 2


@dataclass
class Journeys:
    root: Path
    user: np.ndarray  # (N,) rows sorted by user, then time
    ts: np.ndarray
    day: np.ndarray
    ttype: np.ndarray  # TYPE_CODE
    item: np.ndarray  # -1 when none
    request: np.ndarray  # -1 when none
    action: np.ndarray  # I rows: 0 impression / 1 click / 2 conversion, else -1
    scene: np.ndarray
    slot: np.ndarray
    device: np.ndarray
    hour: np.ndarray
    price: np.ndarray
    split: np.ndarray  # SPLIT_CODE
    user_start: np.ndarray  # (N,) first row of this row's user
    req_sorted: np.ndarray  # request ids of E rows, sorted
    req_rows: np.ndarray  # their E-row positions
    shown_rows: np.ndarray  # per req_sorted: the I row that followed, -1 when no ad was shown
    _by_type: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Journeys:
        ev = ds.events
        user = ev.column("user_id").to_numpy().astype(np.int64)
        order = np.argsort(user, kind="stable")

        def col(name: str, dtype: type = np.int64) -> np.ndarray:
            return ev.column(name).to_numpy(zero_copy_only=False)[order].astype(dtype)

        ttype = _codes(ev.column("token_type").to_numpy(zero_copy_only=False)[order], TYPE_CODE)
        split = _codes(ev.column("split").to_numpy(zero_copy_only=False)[order], SPLIT_CODE)
        user = user[order]
        first = np.r_[True, user[1:] != user[:-1]]
        user_start = np.maximum.accumulate(np.where(first, np.arange(len(user)), 0))
        request = col("request_id")
        e_rows = np.nonzero(ttype == TYPE_CODE["E"])[0]
        by_id = np.argsort(request[e_rows], kind="stable")
        req_sorted, req_rows = request[e_rows][by_id], e_rows[by_id]
        if len(req_sorted) > 1 and (req_sorted[1:] == req_sorted[:-1]).any():
            raise GprInputError("duplicate E row for one request", field="request_id")
        # the I row of a request, when one was shown
        i_rows = np.nonzero(ttype == TYPE_CODE["I"])[0]
        i_rows = i_rows if len(req_sorted) else i_rows[:0]  # public data: no requests
        k = np.searchsorted(req_sorted, request[i_rows])
        k = np.minimum(k, len(req_sorted) - 1)
        ok = req_sorted[k] == request[i_rows]
        shown_rows = np.full(len(req_sorted), -1, dtype=np.int64)
        shown_rows[k[ok]] = i_rows[ok]
        return cls(
            root=ds.root,
            user=user,
            ts=col("timestamp"),
            day=col("day"),
            ttype=ttype,
            item=col("item_id"),
            request=request,
            action=col("action"),
            scene=col("scene"),
            slot=col("slot"),
            device=col("device"),
            hour=col("hour"),
            price=col("price", np.float64),
            split=split,
            user_start=user_start,
            req_sorted=req_sorted,
            req_rows=req_rows,
            shown_rows=shown_rows,
        )

    def __len__(self) -> int:
        return len(self.user)

    def _req_index(self, request_ids: np.ndarray) -> np.ndarray:
        r = np.asarray(request_ids, dtype=np.int64)
        if r.size and not len(self.req_sorted):
            raise GprInputError(f"unknown request id {r.flat[0]} (no requests)", field="request_id")
        k = np.minimum(np.searchsorted(self.req_sorted, r), len(self.req_sorted) - 1)
        if r.size and (self.req_sorted[k] != r).any():
            bad = r[np.argmax(self.req_sorted[k] != r)]
            raise GprInputError(f"unknown request id {bad}", field="request_id")
        return k

    def positions(self, request_ids: np.ndarray) -> np.ndarray:
        """The E-row position of each request."""
        return self.req_rows[self._req_index(request_ids)]

    def shown(self, request_ids: np.ndarray) -> np.ndarray:
        """The I row the logs recorded for each request, -1 when the logs showed nothing."""
        return self.shown_rows[self._req_index(request_ids)]

    def requests(self, split: str) -> np.ndarray:
        """E-row positions of a split's requests, in time order (ties by request id)."""
        if split not in SPLIT_CODE:
            raise GprInputError(f"unknown split '{split}' (choose from {SPLITS})", field="split")
        rows = np.nonzero((self.ttype == TYPE_CODE["E"]) & (self.split == SPLIT_CODE[split]))[0]
        return rows[np.lexsort((self.request[rows], self.ts[rows]))]

    def impressions(self, split: str) -> np.ndarray:
        """I-row positions of a split, in time order."""
        if split not in SPLIT_CODE:
            raise GprInputError(f"unknown split '{split}' (choose from {SPLITS})", field="split")
        rows = np.nonzero((self.ttype == TYPE_CODE["I"]) & (self.split == SPLIT_CODE[split]))[0]
        return rows[np.lexsort((self.request[rows], self.ts[rows]))]

    def _type_rows(self, types: tuple[str, ...] | None) -> np.ndarray | None:
        if types is None:
            return None
        key = tuple(sorted(TYPE_CODE[t] for t in types))
        if key not in self._by_type:
            self._by_type[key] = np.nonzero(np.isin(self.ttype, key))[0]
        return self._by_type[key]

    def last(self, pos: np.ndarray, n: int, types: tuple[str, ...] | None = None) -> np.ndarray:
        """(B, n) row indices of the user's last n tokens (of `types`) strictly before each
        position, oldest first, right-aligned; -1 where the journey is shorter."""
        pos = np.asarray(pos, dtype=np.int64)
        start = self.user_start[pos]
        rows = self._type_rows(types)
        steps = np.arange(-n, 0)
        if rows is None:
            idx = pos[:, None] + steps[None, :]
            return np.where(idx >= start[:, None], idx, -1)
        if len(rows) == 0:
            return np.full((len(pos), n), -1, dtype=np.int64)
        end = np.searchsorted(rows, pos)  # rows[k] < pos for k < end
        lo = np.searchsorted(rows, start)
        k = end[:, None] + steps[None, :]
        return np.where(k >= lo[:, None], rows[np.maximum(k, 0)], -1)


def _codes(values: np.ndarray, codes: dict[str, int]) -> np.ndarray:
    uniq, inv = np.unique(values.astype(str), return_inverse=True)
    lut = np.asarray([codes[u] for u in uniq], dtype=np.int8)
    return lut[inv]


@dataclass
class LogData:
    """What a model may read from a dataset directory (never the truth): items, users, journeys."""

    root: Path
    items: pa.Table
    journeys: Journeys
    ads: Ads
    users: Users

    @classmethod
    def load(cls, root: str | Path) -> LogData:
        ds = load_dataset(root)
        return cls(
            Path(root),
            ds.items,
            Journeys.from_dataset(ds),
            Ads.from_items(ds.items),
            Users.from_table(ds.users),
        )

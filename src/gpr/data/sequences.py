"""Write interaction-sequence datasets (public benchmarks) into the common schema.

Only I tokens exist there. The TIGER protocol's leave-one-out split is part of the import: per
user, the last item is `test`, the second-last `valid`, the rest `train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gpr.core.io import atomic_dir, content_hash, write_json, write_parquet
from gpr.data.schema import EVENTS, ITEMS, USERS

FORMAT = "gpr-data/1"
HISTORY_MAX = 20


def group_starts(user: np.ndarray) -> np.ndarray:
    """Start index of each run of equal user ids."""
    return np.flatnonzero(np.r_[True, user[1:] != user[:-1]])


def leave_one_out(lengths: np.ndarray) -> np.ndarray:
    """Split labels for concatenated sequences of the given lengths (each >= 3)."""
    pos_from_end = (
        np.concatenate([np.arange(n)[::-1] for n in lengths]) if len(lengths) else np.zeros(0, int)
    )
    return np.where(pos_from_end == 0, "test", np.where(pos_from_end == 1, "valid", "train"))


def items_table(item_ids: np.ndarray, titles: list[str], attributes: list[str]) -> pa.Table:
    n = len(item_ids)
    cols: dict[str, Any] = {k: np.full(n, -1) for k in ITEMS}
    for k in ("price", "bid", "budget"):
        cols[k] = np.full(n, np.nan)
    cols.update(item_id=item_ids, kind=["ad"] * n, title=titles, attributes=attributes)
    return pa.table({k: pa.array(v, type=ITEMS[k]) for k, v in cols.items()})


def users_table(
    user_ids: np.ndarray, age_band: np.ndarray | None = None, gender: np.ndarray | None = None
) -> pa.Table:
    n = len(user_ids)
    cols: dict[str, Any] = {k: np.full(n, -1) for k in USERS}
    cols["user_id"] = user_ids
    if age_band is not None:
        cols["age_band"] = age_band
    if gender is not None:
        cols["gender"] = gender
    return pa.table({k: pa.array(v, type=USERS[k]) for k, v in cols.items()})


def write_sequence_dataset(
    out: str | Path,
    users: pa.Table,
    items: pa.Table,
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    source: dict[str, Any],
) -> dict[str, Any]:
    """`user`, `item`, `timestamp`: interactions grouped by user, chronological inside each user."""
    lengths = np.diff(np.r_[group_starts(user), len(user)])
    split = leave_one_out(lengths)
    n = len(user)
    cols: dict[str, Any] = {k: np.full(n, -1) for k in EVENTS}
    day = (timestamp - timestamp.min()) // 86400 if n else timestamp
    cols.update(
        user_id=user,
        timestamp=timestamp,
        day=np.minimum(day, np.iinfo(np.int16).max),
        token_type=np.full(n, "I"),
        item_id=item,
        action=np.ones(n),
        price=np.zeros(n),
        split=split,
    )
    events = pa.table({k: pa.array(v, type=EVENTS[k]) for k, v in cols.items()})
    with atomic_dir(out) as tmp:
        paths = [tmp / "users.parquet", tmp / "items.parquet", tmp / "events.parquet"]
        for p, t in zip(paths, (users, items, events), strict=True):
            write_parquet(p, t)
        manifest = {
            "format": FORMAT,
            "source": source,
            "split": {"scheme": "leave_one_out", "history_max": HISTORY_MAX},
            "rows": {
                "users": users.num_rows,
                "items": items.num_rows,
                "events": n,
                "interactions": n,
            },
            "content_hash": content_hash(paths),
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest

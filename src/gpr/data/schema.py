"""The dataset schema (users / items / events + manifest) and its validation on every read.

Sentinels instead of nulls keep columns dense and fast: -1 for "no item / no request / unknown",
NaN for missing floats. Row numbers in errors are 0-based data rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpr.core.errors import GprInputError
from gpr.core.io import content_hash, read_json

TOKEN_TYPES = ("U", "O", "E", "I")
ITEM_KINDS = ("organic", "ad")
SPLITS = ("train", "valid", "test")
ACTIONS = ("impression", "click", "conversion")

USERS = {
    "user_id": pa.int64(),
    "age_band": pa.int8(),
    "gender": pa.int8(),
    "region": pa.int8(),
    "activity_tier": pa.int8(),
}
ITEMS = {
    "item_id": pa.int64(),
    "kind": pa.string(),
    "title": pa.string(),
    "attributes": pa.string(),
    "category": pa.int32(),
    "subtopic": pa.int32(),
    "advertiser": pa.int32(),
    "price": pa.float64(),
    "bid": pa.float64(),
    "budget": pa.float64(),
    "target_ages": pa.int8(),
    "target_gender": pa.int8(),
    "target_regions": pa.int8(),
    "created_day": pa.int32(),
    "end_day": pa.int32(),
}
ITEM_OPTIONAL = {"embedding": pa.list_(pa.float32())}
EVENTS = {
    "user_id": pa.int64(),
    "timestamp": pa.int64(),
    "day": pa.int16(),
    "token_type": pa.string(),
    "item_id": pa.int64(),
    "request_id": pa.int64(),
    "scene": pa.int8(),
    "slot": pa.int8(),
    "device": pa.int8(),
    "hour": pa.int8(),
    "action": pa.int8(),
    "price": pa.float32(),
    "split": pa.string(),
}


def schema_of(columns: dict[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(k, v) for k, v in columns.items()])


def _compatible(expected: pa.DataType, got: pa.DataType) -> bool:
    if expected == got:
        return True
    if pa.types.is_integer(expected):
        return pa.types.is_integer(got)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(got) or pa.types.is_integer(got)
    if pa.types.is_string(expected):
        return (
            pa.types.is_string(got) or pa.types.is_large_string(got) or pa.types.is_dictionary(got)
        )
    if pa.types.is_list(expected):
        return (
            pa.types.is_list(got) or pa.types.is_fixed_size_list(got) or pa.types.is_large_list(got)
        )
    return False


def read_table(
    path: str | Path,
    columns: dict[str, pa.DataType],
    optional: dict[str, pa.DataType] | None = None,
) -> pa.Table:
    """Read a Parquet file and check it has every column with a compatible type and >= 1 row."""
    path = Path(path)
    if not path.exists():
        raise GprInputError("file not found", file=path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise GprInputError(f"not a readable Parquet file ({e})", file=path) from None
    if table.num_rows == 0:
        raise GprInputError("file has no rows", file=path)
    wanted = dict(columns, **(optional or {}))
    for name in columns:
        if name not in table.column_names:
            raise GprInputError("missing column", file=path, field=name)
    for name, typ in wanted.items():
        if name not in table.column_names:
            continue
        col = table.column(name)
        if not _compatible(typ, col.type):
            raise GprInputError(f"wrong dtype {col.type}, expected {typ}", file=path, field=name)
        if col.null_count and name in columns and not pa.types.is_string(typ):
            i = _first_bad(col.is_null().to_numpy(zero_copy_only=False))
            raise GprInputError(
                "null value (use the -1 / NaN sentinel)", file=path, row=i, field=name
            )
    return table


def _first_bad(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def check_values(path: Path, table: pa.Table, column: str, allowed: tuple[str, ...]) -> None:
    values = table.column(column).to_numpy(zero_copy_only=False).astype(str)
    bad = ~np.isin(values, np.asarray(allowed))
    if bad.any():
        i = _first_bad(bad)
        raise GprInputError(
            f"value '{values[i]}' not one of {allowed}", file=path, row=i, field=column
        )


def check_unique(path: Path, ids: np.ndarray, column: str) -> None:
    order = np.argsort(ids, kind="stable")
    dup = ids[order][1:] == ids[order][:-1]
    if dup.any():
        i = int(order[1:][_first_bad(dup)])
        raise GprInputError(f"duplicate id {ids[i]}", file=path, row=i, field=column)


def check_ads(path: Path, items: pa.Table) -> None:
    """Ads of an ad market (those with a bid; public datasets' targets have none) have a positive,
    finite bid, price and budget, and end after they start."""
    ads = items.column("kind").to_numpy(zero_copy_only=False).astype(str) == "ad"
    market = ads & ~np.isnan(items.column("bid").to_numpy(zero_copy_only=False).astype(np.float64))
    for column in ("bid", "price", "budget"):
        v = items.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        bad = market & ~(np.isfinite(v) & (v > 0))
        if bad.any():
            i = _first_bad(bad)
            raise GprInputError(
                f"an ad needs a positive {column}, got {v[i]}", file=path, row=i, field=column
            )
    start = items.column("created_day").to_numpy(zero_copy_only=False)
    end = items.column("end_day").to_numpy(zero_copy_only=False)
    bad = market & (end <= start)
    if bad.any():
        i = _first_bad(bad)
        raise GprInputError("an ad must end after it starts", file=path, row=i, field="end_day")


def check_known(
    path: Path, ids: np.ndarray, known: np.ndarray, column: str, allow_missing: bool
) -> None:
    present = ids >= 0 if allow_missing else np.ones(len(ids), bool)
    unknown = present & ~np.isin(ids, known)
    if unknown.any():
        i = _first_bad(unknown)
        raise GprInputError(f"unknown id {ids[i]}", file=path, row=i, field=column)


def check_monotonic(path: Path, users: np.ndarray, ts: np.ndarray) -> None:
    """Timestamps must not decrease within a user (in file order)."""
    order = np.argsort(users, kind="stable")
    u, t = users[order], ts[order]
    bad = (u[1:] == u[:-1]) & (t[1:] < t[:-1])
    if bad.any():
        i = int(order[1:][_first_bad(bad)])
        raise GprInputError(
            f"timestamp {ts[i]} goes back in time for user {users[i]}",
            file=path,
            row=i,
            field="timestamp",
        )


@dataclass
class Dataset:
    """A validated dataset directory: users, items, events and the manifest."""

    root: Path
    users: pa.Table
    items: pa.Table
    events: pa.Table
    manifest: dict[str, Any]

    def col(self, table: str, name: str) -> np.ndarray:
        t: pa.Table = getattr(self, table)
        return t.column(name).to_numpy(zero_copy_only=False)


SPLIT_SCHEMES = ("days", "leave_one_out")


def read_manifest(root: Path) -> dict[str, Any]:
    """DIR/manifest.json, with the keys that readers rely on checked: `content_hash`, `split.scheme`
    and, for the "days" scheme, `split.train_days` (it decides the tokenizer's fitted items)."""
    path = root / "manifest.json"
    m = read_json(path)
    if not isinstance(m, dict):
        raise GprInputError("expected a JSON object", file=path)
    if not isinstance(m.get("content_hash"), str):
        raise GprInputError("missing or not a string", file=path, field="content_hash")
    split = m.get("split")
    if not isinstance(split, dict) or split.get("scheme") not in SPLIT_SCHEMES:
        raise GprInputError(
            f"split.scheme must be one of {SPLIT_SCHEMES}", file=path, field="split"
        )
    days = split.get("train_days")
    if split["scheme"] == "days" and (
        not isinstance(days, list) or not all(type(d) is int for d in days)
    ):
        raise GprInputError(
            "a list of day numbers is required", file=path, field="split.train_days"
        )
    return m


def load_dataset(root: str | Path) -> Dataset:
    """Read and validate DIR/{users,items,events}.parquet and DIR/manifest.json."""
    root = Path(root)
    if not root.is_dir():
        raise GprInputError("dataset directory not found", file=root)
    manifest = read_manifest(root)
    users = read_table(root / "users.parquet", USERS)
    items = read_table(root / "items.parquet", ITEMS, ITEM_OPTIONAL)
    events = read_table(root / "events.parquet", EVENTS)
    up, ip, ep = root / "users.parquet", root / "items.parquet", root / "events.parquet"
    user_ids = users.column("user_id").to_numpy()
    item_ids = items.column("item_id").to_numpy()
    check_unique(up, user_ids, "user_id")
    check_unique(ip, item_ids, "item_id")
    check_values(ip, items, "kind", ITEM_KINDS)
    check_ads(ip, items)
    check_values(ep, events, "token_type", TOKEN_TYPES)
    check_values(ep, events, "split", SPLITS)
    ev_users = events.column("user_id").to_numpy()
    check_known(ep, ev_users, user_ids, "user_id", allow_missing=False)
    check_known(ep, events.column("item_id").to_numpy(), item_ids, "item_id", allow_missing=True)
    check_monotonic(ep, ev_users, events.column("timestamp").to_numpy())
    if manifest["content_hash"] != content_hash([up, ip, ep]):
        raise GprInputError(
            "the data files do not match the manifest's content_hash (edited after writing?)",
            file=root / "manifest.json",
            field="content_hash",
        )
    return Dataset(root, users, items, events, manifest)

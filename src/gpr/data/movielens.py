"""Import MovieLens-100K (u.data, u.item, u.user) as implicit, time-ordered sequences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gpr.core.errors import GprInputError
from gpr.data.sequences import items_table, users_table, write_sequence_dataset

GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
AGE_EDGES = (18, 25, 35, 50)  # -> 5 age bands


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    if not path.exists():
        raise GprInputError("file not found", file=path)
    lines = [ln for ln in path.read_text(encoding=encoding).splitlines() if ln.strip()]
    if not lines:
        raise GprInputError("file has no rows", file=path)
    return lines


def _int(path: Path, row: int, field: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise GprInputError(
            f"expected an integer, got '{value}'", file=path, row=row, field=field
        ) from None


def import_ml100k(data_dir: str | Path, out: str | Path) -> dict[str, Any]:
    root = Path(data_dir)
    ratings = root / "u.data"
    rows = []
    for r, ln in enumerate(_lines(ratings)):
        parts = ln.split("\t")
        if len(parts) != 4:
            raise GprInputError(
                "expected 4 tab-separated fields", file=ratings, row=r, field="line"
            )
        rows.append(
            (
                _int(ratings, r, "user_id", parts[0]),
                _int(ratings, r, "item_id", parts[1]),
                _int(ratings, r, "timestamp", parts[3]),
            )
        )
    data = np.asarray(rows, dtype=np.int64)
    order = np.lexsort((data[:, 2], data[:, 0]))  # by user, then time; stable for ties
    user, item, ts = data[order, 0], data[order, 1], data[order, 2]

    item_path = root / "u.item"
    titles: dict[int, tuple[str, str]] = {}
    for r, ln in enumerate(_lines(item_path, encoding="latin-1")):
        parts = ln.split("|")
        if len(parts) != 5 + len(GENRES):
            raise GprInputError(
                f"expected {5 + len(GENRES)} '|'-separated fields",
                file=item_path,
                row=r,
                field="line",
            )
        genres = [g for g, flag in zip(GENRES, parts[5:], strict=True) if flag == "1"]
        titles[_int(item_path, r, "movie_id", parts[0])] = (parts[1], "|".join(genres))
    unknown = ~np.isin(item, np.fromiter(titles, dtype=np.int64))
    if unknown.any():
        raise GprInputError(
            f"item {item[np.argmax(unknown)]} not in u.item", file=ratings, field="item_id"
        )

    user_path = root / "u.user"
    demo: dict[int, tuple[int, int]] = {}
    for r, ln in enumerate(_lines(user_path)):
        parts = ln.split("|")
        if len(parts) != 5:
            raise GprInputError(
                "expected 5 '|'-separated fields", file=user_path, row=r, field="line"
            )
        if parts[2] not in ("M", "F"):
            raise GprInputError(
                f"gender '{parts[2]}' not M/F", file=user_path, row=r, field="gender"
            )
        age = _int(user_path, r, "age", parts[1])
        demo[_int(user_path, r, "user_id", parts[0])] = (
            int(np.searchsorted(AGE_EDGES, age, side="right")),
            int(parts[2] == "F"),
        )
    user_ids = np.unique(user)
    missing = ~np.isin(user_ids, np.fromiter(demo, dtype=np.int64))
    if missing.any():
        raise GprInputError(
            f"user {user_ids[np.argmax(missing)]} not in u.user", file=ratings, field="user_id"
        )
    item_ids = np.unique(item)
    users = users_table(
        user_ids,
        np.asarray([demo[int(u)][0] for u in user_ids]),
        np.asarray([demo[int(u)][1] for u in user_ids]),
    )
    items = items_table(
        item_ids, [titles[int(i)][0] for i in item_ids], [titles[int(i)][1] for i in item_ids]
    )
    source = {"kind": "ml100k", "name": "ml-100k", "dir": str(root)}
    return write_sequence_dataset(out, users, items, user, item, ts, source)

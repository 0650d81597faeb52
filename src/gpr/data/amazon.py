"""Import the Amazon 2014 5-core sequences (S3Rec/TIGER format) plus item_meta.tsv."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from gpr.core.errors import GprInputError
from gpr.data.sequences import group_starts, items_table, users_table, write_sequence_dataset


def read_sequences(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Lines `user item item ...` -> (user, item) arrays in file order (chronological per user)."""
    path = Path(path)
    if not path.exists():
        raise GprInputError("file not found", file=path)
    users: list[int] = []
    items: list[int] = []
    seen: set[int] = set()
    with open(path) as f:
        for row, line in enumerate(f):
            parts = line.split()
            if not parts:
                continue
            try:
                ids = [int(p) for p in parts]
            except ValueError:
                raise GprInputError(
                    "expected integer ids", file=path, row=row, field="item_id"
                ) from None
            if len(ids) < 4:
                raise GprInputError(
                    "a user needs at least 3 items for leave-one-out",
                    file=path,
                    row=row,
                    field="items",
                )
            if ids[0] in seen:
                raise GprInputError(
                    f"user {ids[0]} appears twice", file=path, row=row, field="user_id"
                )
            if min(ids) < 0:
                raise GprInputError("negative id", file=path, row=row, field="item_id")
            seen.add(ids[0])
            users.extend([ids[0]] * (len(ids) - 1))
            items.extend(ids[1:])
    if not users:
        raise GprInputError("file has no sequences", file=path)
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def read_meta(path: str | Path) -> dict[int, tuple[str, str]]:
    """item_meta.tsv -> {item_id: (title, attributes)}; Sports has no title: its text id is used."""
    path = Path(path)
    if not path.exists():
        raise GprInputError("file not found", file=path)
    out: dict[int, tuple[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        fields = reader.fieldnames or []
        if "item_id" not in fields:
            raise GprInputError("missing column", file=path, field="item_id")
        if "title" not in fields and "idgenrec_text" not in fields:
            raise GprInputError(
                "missing column (need title or idgenrec_text)", file=path, field="title"
            )
        for row, rec in enumerate(reader):
            try:
                iid = int(rec["item_id"])
            except (TypeError, ValueError):
                raise GprInputError(
                    "expected an integer", file=path, row=row, field="item_id"
                ) from None
            title = (rec.get("title") or "").strip() or (rec.get("idgenrec_text") or "").strip()
            out[iid] = (title, (rec.get("attributes") or "").strip())
    if not out:
        raise GprInputError("file has no rows", file=path)
    return out


def import_amazon(
    seq: str | Path, meta: str | Path, out: str | Path, name: str | None = None
) -> dict[str, Any]:
    user, item = read_sequences(seq)
    info = read_meta(meta)
    known = np.fromiter(info.keys(), dtype=np.int64)
    unknown = ~np.isin(item, known)
    if unknown.any():
        i = int(np.argmax(unknown))
        line = int(np.searchsorted(group_starts(user), i, side="right") - 1)
        raise GprInputError(
            f"item {item[i]} is not in {Path(meta).name}", file=seq, row=line, field="item_id"
        )
    item_ids = np.unique(item)
    titles = [info[int(i)][0] for i in item_ids]
    attrs = [info[int(i)][1] for i in item_ids]
    starts = group_starts(user)
    ts = np.arange(len(user)) - np.repeat(starts, np.diff(np.r_[starts, len(user)]))
    source = {"kind": "amazon", "name": name or Path(seq).stem, "seq": str(seq), "meta": str(meta)}
    return write_sequence_dataset(
        out,
        users_table(np.unique(user)),
        items_table(item_ids, titles, attrs),
        user,
        item,
        ts,
        source,
    )

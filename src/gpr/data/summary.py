"""A short summary of a validated dataset (used by `gpr data summary` and the demo report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gpr.data.schema import load_dataset


def summarize(root: str | Path) -> dict[str, Any]:
    ds = load_dataset(root)
    ttype = ds.col("events", "token_type").astype(str)
    split = ds.col("events", "split").astype(str)
    users = ds.col("events", "user_id")
    kinds = ds.col("items", "kind").astype(str)
    i_rows = ttype == "I"
    action = ds.col("events", "action")[i_rows]
    per_user = np.bincount(np.unique(users, return_inverse=True)[1][i_rows])
    out: dict[str, Any] = {
        "source": ds.manifest.get("source")
        if isinstance(ds.manifest.get("source"), str)
        else ds.manifest["source"].get("name"),
        "users": ds.users.num_rows,
        "items": ds.items.num_rows,
        "organic items": int((kinds == "organic").sum()),
        "ads / target items": int((kinds == "ad").sum()),
        "events": ds.events.num_rows,
    }
    for t in ("U", "O", "E", "I"):
        out[f"{t} tokens"] = int((ttype == t).sum())
    for s in ("train", "valid", "test"):
        out[f"{s} I tokens"] = int((i_rows & (split == s)).sum())
    out["I tokens per user (mean)"] = round(float(per_user.mean()), 2) if len(per_user) else 0.0
    if (action >= 0).any() and (action != 1).any():
        clicks = int((action >= 1).sum())
        out["CTR of shown ads"] = f"{clicks / max(len(action), 1):.2%}"
        out["CVR of clicks"] = f"{int((action == 2).sum()) / max(clicks, 1):.2%}"
    out["split"] = ds.manifest["split"]["scheme"]
    out["content hash"] = ds.manifest["content_hash"][:16]
    return out

"""`gpr tokenize`: fit a tokenizer on the items known at training time, give every item a SID.

Output directory TOK (written atomically):
- `sids.parquet`: item_id int64, codes fixed_size_list<int16>[L] (int32 when K > 32767),
  dedup int32, kind string, is_new bool; one row per item, in items.parquet order. (codes, dedup)
  is unique over all rows.
- `tokenizer.json` + `tokenizer.safetensors` (Tokenizer.save).
- `metrics.json`: collision_rate, cur (per level), pas (null when nothing collides), recon_mse,
  n_items, seconds, nmi_level1 (only when categories are known), method, levels, codebook_size,
  n_fit_items, n_new_items, dedup_max. Quality metrics use the fit items' codes before de-dup.

Fit items: for the ad world (manifest split scheme "days"), organic items and ads created on or
before the last train day; later ads are "new" and get codes by encoding plus an extended de-dup
level, as a cold-start ad would in production. For public data every item is a fit item.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gpr.core.config import GprConfig, TokenizerConfig
from gpr.core.errors import GprInputError
from gpr.core.io import atomic_dir, atomic_write_text, read_json, write_json, write_parquet
from gpr.data.schema import read_manifest, read_table
from gpr.tokenizer.collab import with_collab
from gpr.tokenizer.dedup import dedup_index, extend_dedup, validate_embeddings
from gpr.tokenizer.embed import EmbeddingResult, embed_items, read_items
from gpr.tokenizer.methods import METHODS, build_tokenizer, load_tokenizer
from gpr.tokenizer.metrics import collision_rate, cur, nmi, pas

SIDS_NAME = "sids.parquet"
METRICS_NAME = "metrics.json"
COMPARE_COLUMNS = (
    "method",
    "collision",
    "CUR per level",
    "PAS",
    "recon MSE",
    "NMI L1",
    "seconds",
)


def _resolve(cfg: GprConfig | TokenizerConfig, seed: int | None) -> tuple[TokenizerConfig, int]:
    if isinstance(cfg, GprConfig):
        return cfg.tokenizer, cfg.seed if seed is None else int(seed)
    return cfg, 0 if seed is None else int(seed)


def fit_mask(items: pa.Table, manifest: dict[str, Any]) -> np.ndarray:
    """(n,) bool: items that exist at training time (see the module docstring)."""
    n = items.num_rows
    split = manifest.get("split") or {}
    train_days = split.get("train_days")
    if split.get("scheme") != "days" or not train_days:
        return np.ones(n, dtype=bool)
    last = int(max(train_days))
    created = items.column("created_day").to_numpy(zero_copy_only=False).astype(np.int64)
    return created <= last


def sids_table(
    item_ids: np.ndarray,
    codes: np.ndarray,
    dedup: np.ndarray,
    kind: Sequence[str] | pa.Array | pa.ChunkedArray,
    is_new: np.ndarray,
    codebook_size: int,
) -> pa.Table:
    """The sids.parquet table."""
    n, levels = codes.shape
    ctype = pa.int16() if codebook_size <= np.iinfo(np.int16).max + 1 else pa.int32()
    flat = pa.array(codes.reshape(-1), type=ctype)
    return pa.table(
        {
            "item_id": pa.array(np.asarray(item_ids, dtype=np.int64)),
            "codes": pa.FixedSizeListArray.from_arrays(flat, levels),
            "dedup": pa.array(np.asarray(dedup, dtype=np.int32)),
            "kind": pa.array(kind, type=pa.string())
            if not isinstance(kind, pa.ChunkedArray)
            else kind.cast(pa.string()),
            "is_new": pa.array(np.asarray(is_new, dtype=bool)),
        }
    )


SIDS_COLUMNS = {
    "item_id": pa.int64(),
    "codes": pa.list_(pa.int64()),
    "dedup": pa.int32(),
    "kind": pa.string(),
    "is_new": pa.bool_(),
}


def read_sids(tok_dir: str | Path) -> tuple[pa.Table, np.ndarray]:
    """sids.parquet of a TOK dir and its codes as (n, L) int64."""
    path = Path(tok_dir) / SIDS_NAME
    table = read_table(path, SIDS_COLUMNS)
    col = table.column("codes").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        raise GprInputError(f"codes must be a fixed-size list, got {col.type}", file=path)
    codes = col.flatten().to_numpy().astype(np.int64).reshape(table.num_rows, col.type.list_size)
    return table, codes


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def tokenizer_input(
    data_dir: str | Path,
    item_ids: np.ndarray,
    content: np.ndarray,
    tcfg: TokenizerConfig,
    seed: int,
) -> np.ndarray:
    """What the tokenizer encodes: the content embedding, with the train-split collaborative
    vector appended when `tokenizer.collab_dim` > 0 (rows in `item_ids` order)."""
    x = validate_embeddings(content, 0, file=Path(data_dir) / "embeddings")
    if tcfg.collab_dim > 0:
        x = with_collab(
            data_dir, item_ids, x, tcfg.collab_dim, tcfg.collab_weight, tcfg.collab_window, seed
        )
    return x


def saved_tokenizer_input(
    data_dir: str | Path, tok_dir: str | Path, emb: EmbeddingResult
) -> np.ndarray:
    """The tokenizer input that the TOK dir's SIDs were built from (its saved config and seed)
    out of the data's embeddings `emb`, rows in `emb.item_ids` order."""
    meta = read_json(Path(tok_dir) / "tokenizer.json")
    tcfg = TokenizerConfig.model_validate(meta["config"])
    ids = np.asarray(emb.item_ids, dtype=np.int64)
    return tokenizer_input(data_dir, ids, emb.matrix, tcfg, int(meta["seed"]))


def run_tokenize(
    data_dir: str | Path,
    cfg: GprConfig | TokenizerConfig,
    out: str | Path,
    *,
    seed: int | None = None,
    method: str | None = None,
    embeddings: EmbeddingResult | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Fit, assign SIDs to all items (new ones via encode + extended de-dup), write `out`.

    `cfg` is the whole config (its seed is used unless `seed` is given) or a TokenizerConfig
    (seed 0 unless given). `method` overrides cfg.method. `embeddings` defaults to
    `embed_items(data_dir)` (cached). Returns the metrics written to metrics.json.
    """
    tcfg, seed_ = _resolve(cfg, seed)
    if method is not None:
        if method not in METHODS:
            raise GprInputError(
                f"unknown method '{method}' (choose from {', '.join(METHODS)})", field="method"
            )
        tcfg = tcfg.model_copy(update={"method": method})
    root = Path(data_dir)
    items = read_items(root)
    manifest = read_manifest(root)
    emb = embeddings if embeddings is not None else embed_items(root, device=tcfg.device)
    item_ids = items.column("item_id").to_numpy().astype(np.int64)
    if not np.array_equal(np.asarray(emb.item_ids, dtype=np.int64), item_ids):
        raise GprInputError(
            "embeddings do not match the items of this dataset (re-run `gpr embed`)",
            file=root / "items.parquet",
            field="item_id",
        )
    emb_file = root / "embeddings"
    x = tokenizer_input(root, item_ids, emb.matrix, tcfg, seed_)
    fit = fit_mask(items, manifest)
    x_fit = validate_embeddings(x[fit], tcfg.codebook_size, file=emb_file)

    t0 = time.perf_counter()
    tok = build_tokenizer(tcfg, seed_)
    stats = tok.fit(x_fit)
    codes = tok.encode(x)
    seconds = time.perf_counter() - t0

    codes_fit = codes[fit]
    dedup = np.zeros(len(item_ids), dtype=np.int64)
    dedup[fit] = dedup_index(codes_fit)
    new = ~fit
    if new.any():
        dedup[new] = extend_dedup(codes_fit, dedup[fit], codes[new])

    metrics: dict[str, Any] = {
        "method": tcfg.method,
        "levels": tcfg.levels,
        "codebook_size": tcfg.codebook_size,
        "n_items": int(len(item_ids)),
        "n_fit_items": int(fit.sum()),
        "n_new_items": int(new.sum()),
        "collision_rate": collision_rate(codes_fit),
        "cur": cur(codes_fit, tcfg.codebook_size),
        "pas": _finite(pas(codes_fit, x_fit)),
        "recon_mse": float(stats["recon_mse"]),
        "dedup_max": int(dedup.max()),
        "seconds": round(seconds, 3),
    }
    if tcfg.collab_dim > 0:
        metrics["collab_dim"] = tcfg.collab_dim
        metrics["collab_weight"] = tcfg.collab_weight
    category = items.column("category").to_numpy(zero_copy_only=False).astype(np.int64)
    known = fit & (category >= 0)
    if known.any():
        metrics["nmi_level1"] = nmi(codes[known, 0], category[known])

    table = sids_table(item_ids, codes, dedup, items.column("kind"), new, tcfg.codebook_size)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_parquet(tmp / SIDS_NAME, table)
        tok.save(tmp)
        write_json(tmp / METRICS_NAME, metrics)
    return metrics


def run_compare(
    data_dir: str | Path,
    cfg: GprConfig | TokenizerConfig,
    out: str | Path,
    *,
    seed: int | None = None,
    methods: Sequence[str] = tuple(METHODS),
    embeddings: EmbeddingResult | None = None,
    overwrite: bool = True,
) -> list[dict[str, Any]]:
    """Run each method on the same embeddings into out/<method>/; write compare.json/.md."""
    tcfg, seed_ = _resolve(cfg, seed)
    root = Path(data_dir)
    emb = embeddings if embeddings is not None else embed_items(root, device=tcfg.device)
    rows: list[dict[str, Any]] = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for m in methods:
            rows.append(run_tokenize(root, tcfg, tmp / m, seed=seed_, method=m, embeddings=emb))
        write_json(tmp / "compare.json", {"seed": seed_, "embedding": emb.meta, "rows": rows})
        atomic_write_text(tmp / "compare.md", compare_table(rows) + "\n")
    return rows


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def compare_table(rows: Sequence[dict[str, Any]], per_100k: bool = False) -> str:
    """Markdown table of metrics rows; `per_100k` adds seconds per 100k items."""
    head = list(COMPARE_COLUMNS) + (["s / 100k items"] if per_100k else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["method"],
            f"{100 * r['collision_rate']:.2f}%",
            " / ".join(f"{100 * c:.1f}%" for c in r["cur"]),
            _fmt(r.get("pas"), 3),
            _fmt(r["recon_mse"]),
            _fmt(r.get("nmi_level1"), 3),
            f"{r['seconds']:.2f}",
        ]
        if per_100k:
            cells.append(f"{r['seconds'] * 1e5 / max(1, r['n_items']):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def assign_new_items(
    tok_dir: str | Path, item_ids: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SIDs for items created after training, without retraining.

    Encodes `x` (n, d) with the saved tokenizer and continues the de-dup level after the largest
    index used on each path in TOK/sids.parquet. Returns (codes (n, L) int64, dedup (n,) int64).
    Ids already in sids.parquet are rejected.
    """
    root = Path(tok_dir)
    table, old_codes = read_sids(root)
    ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] != ids.shape[0]:
        raise GprInputError(
            f"{ids.shape[0]} item ids but embeddings of shape {arr.shape}", field="embedding"
        )
    known = np.isin(ids, table.column("item_id").to_numpy())
    if known.any():
        i = int(np.argmax(known))
        raise GprInputError(
            f"item {ids[i]} already has a SID", file=root / SIDS_NAME, row=i, field="item_id"
        )
    uniq, first = np.unique(ids, return_index=True)
    if len(uniq) != len(ids):
        dup = np.ones(len(ids), dtype=bool)
        dup[first] = False
        i = int(np.argmax(dup))
        raise GprInputError(f"duplicate item id {ids[i]}", row=i, field="item_id")
    tok = load_tokenizer(root)
    codes = tok.encode(arr)
    old_dedup = table.column("dedup").to_numpy().astype(np.int64)
    return codes, extend_dedup(old_codes, old_dedup, codes)

